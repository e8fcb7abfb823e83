"""Getting data off boxes and releases onto them, over SSH.

``python -m firmware_tools``: ``pull-data`` copies new takes from a box, verified
and resumable (``pull.py``); ``release`` builds a release and fetches the box's
wheels (``release.py``); ``deploy`` installs a release and rolls back when it does
not come up (``deploy.py``); ``flash-model`` checks a bundle on the box before it
becomes available (``flash.py``); ``provision`` prepares a fresh Pi
(``provision.py``). ``ssh.py`` is the one SSH/rsync wrapper, with one-line errors.

May import ``device`` (to read takes and validate bundles with the device's own
code) and never TensorFlow.
"""
