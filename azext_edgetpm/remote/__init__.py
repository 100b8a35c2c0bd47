"""SSH access to devices. Import `azext_edgetpm.remote.session` (paramiko) only when a
command runs; `target` is light and can be used while parsing arguments."""
