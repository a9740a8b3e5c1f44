"""The test lab: network namespaces, processes and helpers shared by the tests, the benchmarks and the demo.

It lives in the installed package (not under ``tests/``) so that ``pyvpn demo``, ``pyvpn bench`` and the
test suite import one copy without touching ``sys.path``.  Nothing here is used by the daemon itself.

- :mod:`vpn.testlab.netns`: one :class:`~vpn.testlab.netns.Netns` (a namespace with loopback up and the
  processes started in it, removed with them), veth pairs, bounded commands and polling.
- :mod:`vpn.testlab.packets`: the one set of packet builders (IPv4/IPv6 with checksums, UDP, TCP, Ethernet
  with VLAN tags) and packets of exact sizes carrying a sequence number.
- :mod:`vpn.testlab.differential`: a stage's bulk branch checked against its general loop on random batches.
- :mod:`vpn.testlab.child`: one function of a lab module run in a child process (inside a namespace), its
  result back as JSON; :mod:`vpn.testlab.tun_scenarios` and :mod:`vpn.testlab.offload_scenarios` are the
  kernel scenarios it runs for the tun, UDP and offload tests.
- :mod:`vpn.testlab.pair`: two :class:`crypto.tunnel.Core` objects with a fake clock, wired by hand.
- :mod:`vpn.testlab.show_schema`: ``pyvpn show --json`` checked against docs/show-json.md.
- :mod:`vpn.testlab.files`: configs and keys written with mode 0600.
- :mod:`vpn.testlab.configs`: config files as the production model (:mod:`vpn.config.model`), written by the
  production writer (:mod:`vpn.config.writer`): pyvpn's (``conf_text``, ``PeerSpec``), ``wg setconf``'s and
  ``wg-quick``'s (``WgPeer``), endpoints and CIDRs.
- :mod:`vpn.testlab.commands`: this installation's ``pyvpn`` command line and environment, and one-shot runs
  (in a pipe or on a pseudo-terminal).
- :mod:`vpn.testlab.keys`: key pairs and preshared keys (base64, as ``wg`` prints them), made in pure Python.
- :mod:`vpn.testlab.pyvpn`: ``pyvpn server``/``client`` daemons in namespaces (:class:`~vpn.testlab.pyvpn.Pyvpn`,
  the one runner, also used by the hostile tests, the benchmark and the demo; :class:`~vpn.testlab.pyvpn.Fleet`)
  and wg-quick files for them.
- :mod:`vpn.testlab.wggo`: Debian's ``wireguard-go`` (configured with ``wg``) as a reference peer, its
  ``wg show dump`` parsed, and a two-peer reference topology.
- :mod:`vpn.testlab.traffic`: pings, sha256-checked TCP transfers and iperf3 runs between namespaces.
- :mod:`vpn.testlab.l2sites`: the tap tests' sites: daemons with segments, bridges and hosts on them, pings in
  parallel, broadcast counts, learned MACs and a segment's ``show --json`` entry.
"""
