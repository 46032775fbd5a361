#!/usr/bin/python
# -*- coding: utf-8 -*-
# Rehearsal stand-in for openstack.cloud.floating_ip (tests/rehearsal/README.md).
# GNU General Public License v3.0+ (like the collection it shadows).

DOCUMENTATION = r'''
---
module: floating_ip
short_description: "Rehearsal fake of openstack.cloud.floating_ip"
description:
  - "Validates the task's arguments against the argument spec of the installed (real)
    openstack.cloud.floating_ip, then emulates it against the rehearsal's fake cloud:
    a floating IP: the server's own container address (the host reaches every container)."
  - "Returns the structure documented by the real module (openstack.cloud 2.5.0)."
author: IoT pipeline rehearsal
'''

from ansible_collections.openstack.cloud.plugins.module_utils.fake_cloud import run_module  # noqa: E402


def main():
    run_module("floating_ip")


if __name__ == "__main__":
    main()
