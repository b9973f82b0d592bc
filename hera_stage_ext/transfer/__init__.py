"""Site-to-site transfers: peers, the pull protocol, the sending and the receiving side.

``peers.py`` and ``peer_config.py`` (configuration and the peer secret check), ``protocol.py``
(the messages and the HTTP client of the protocol), ``transfer_kind.py`` (transfer jobs: the
``transfer`` job kind), ``peer_sender.py`` (a transfer job's stream towards a hera_stage_ext
peer), ``outgoing.py`` (the sending site's records and lookups: remote instances, offers, the
files a peer pulls, ``GET peers``), ``receiver.py`` (announce, pull, verify, commit),
``models.py`` (the ``transfer_item`` and ``remote_instance`` tables), ``rclone.py`` and
``rclone_send.py`` (peers that are rclone remotes, not hera_stage_ext sites), ``upload.py``
(the ``upload`` kind), ``orders.py`` (standing orders).
"""
