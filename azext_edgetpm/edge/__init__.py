"""Installing and configuring IoT Edge on a device: the install plan as idempotent steps
(check -> change only what differs -> verify), config.toml editing with tomlkit, and the
parsers of the runtime's own status, check and log output."""
