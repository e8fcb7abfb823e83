"""Getting data off boxes and releases onto them, over SSH.

``python -m firmware_tools pull-data HOST`` copies new takes from a box, verified
and resumable (``firmware_tools/pull.py``); ``firmware_tools/ssh.py`` is the one
SSH/rsync wrapper, with one-line errors. Deploy, model flashing and provisioning
are not built yet.

May import ``device`` (to read takes and validate bundles with the device's own
code) and never TensorFlow.
"""
