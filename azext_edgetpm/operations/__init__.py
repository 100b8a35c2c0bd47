"""Single-device operations, one module per step, shared by every command and the fleet runner.

Data flows one way: the az face (custom.py, custom_fleet.py: only the face sees `cmd`) -> these operations ->
the adapters (remote, tpm, dps, edge). Each step takes typed options and returns a typed
result (a dataclass with ``to_output()``, the JSON the commands print):

- ``device``    SshOptions: how to reach one device; ``session()`` opens ONE SSH connection
- ``identify``  EK + registration ID (the one place the ID is derived, honouring id_format)
- ``enroll``    individual enrollment create-or-confirm, single and bulk (fleet)
- ``install``   the IoT Edge install plan; a failure returns its step report
- ``wait``      until DPS (or the device itself) reports the registration assigned
- ``status``    the runtime's health
- ``provision`` the per-device pipeline of those steps (`az edge-tpm provision`)

Nothing heavy is imported here: import the step modules where they are used.
"""
