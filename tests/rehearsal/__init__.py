"""Cloud-less rehearsal of the Chameleon deployment: systemd containers as VMs, a fake
openstack.cloud collection and a fake Blazar CLI.  See tests/rehearsal/README.md."""
