"""Site-to-site transfers: peers, the pull protocol, the sending and the receiving side.

``peers.py`` (configuration and the peer secret check), ``protocol.py`` (the messages and the
HTTP client of the protocol), ``jobs.py`` (transfer jobs: the ``transfer`` job kind), ``sender.py``
(remote instances, ``GET peers``), ``receiver.py`` (announce, pull,
verify, commit), ``models.py`` (the ``transfer_item`` and ``remote_instance`` tables),
``rclone.py`` and ``rclone_send.py`` (peers that are rclone remotes, not hera_stage_ext sites).
"""
