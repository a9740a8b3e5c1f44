"""pyvpn's benchmarks, importable as a package (``python -m benchmarks.netbench``, ``pyvpn bench``).

:mod:`benchmarks.netbench` (side by side in namespaces, with :mod:`benchmarks.paths`), :mod:`benchmarks.latency`
(ping RTT and idle CPU), :mod:`benchmarks.modes` (shared and pinned runs in one table) and the ``micro_*``
benchmarks.  See benchmarks/README.md.
"""
