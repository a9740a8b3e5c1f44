"""``python -m vpn.cli``: the ``pyvpn`` command."""

from . import main

if __name__ == "__main__":
    main()
