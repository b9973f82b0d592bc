"""Site-to-site transfers: peers, the pull protocol, the sending and the receiving side.

``peers.py`` (configuration and the peer secret check), ``protocol.py`` (the messages and the
HTTP client of the protocol), ``sender.py`` (``send_files``), ``receiver.py`` (announce, pull,
verify, commit), ``models.py`` (the ``transfer_item`` and ``remote_instance`` tables).
"""
