"""The lab's server around the models: the app home and data roots, roles, the audit log, logs, background priority."""
