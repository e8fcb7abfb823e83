"""Getting releases and models onto boxes: release building, deploy, model flashing,
provisioning, all over SSH.

May import ``device`` (to validate bundles with the device's own code) and never
TensorFlow. Its commands (``python -m firmware_tools deploy / flash-model /
provision``) are not built yet; until they are, bundles are checked on any machine
with ``python -m device check-bundle``.
"""
