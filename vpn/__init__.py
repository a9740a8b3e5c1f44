"""pyvpn's application layer."""

#: Loggers set to the level the operator asked for; libraries (pyroute2 logs every netlink message at DEBUG,
#: asyncio every selector) stay at INFO or above.
OUR_LOGGERS = ("pyvpn", "tunnel", "crypto", "vpn")
