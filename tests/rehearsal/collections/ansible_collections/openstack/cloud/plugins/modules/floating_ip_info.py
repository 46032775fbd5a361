#!/usr/bin/python
# -*- coding: utf-8 -*-
# Rehearsal stand-in for openstack.cloud.floating_ip_info (tests/rehearsal/README.md).
# GNU General Public License v3.0+ (like the collection it shadows).

DOCUMENTATION = r'''
---
module: floating_ip_info
short_description: "Rehearsal fake of openstack.cloud.floating_ip_info"
description:
  - "Validates the task's arguments against the argument spec of the installed (real)
    openstack.cloud.floating_ip_info, then lists the rehearsal's fake floating IPs
    (by description, fixed_ip_address, floating_ip_address, floating_network, status)."
  - "Returns the structure documented by the real module (openstack.cloud 2.5.0)."
author: IoT pipeline rehearsal
'''

from ansible_collections.openstack.cloud.plugins.module_utils.fake_cloud import run_module  # noqa: E402


def main():
    run_module("floating_ip_info")


if __name__ == "__main__":
    main()
