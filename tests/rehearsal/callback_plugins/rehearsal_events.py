"""Ansible callback of the rehearsal (tests/rehearsal/run.py): every play, task, handler and
result as one JSON line in $IOT_REHEARSAL_EVENTS, next to the normal output.  The run reads
it for the stage timings (play starts), the changed tasks of each role (second run) and the
handlers that ran (third run).  Enabled only through ANSIBLE_CALLBACKS_ENABLED."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: rehearsal_events
type: notification
short_description: JSON lines of plays, tasks and results for the rehearsal
description:
  - Appends one JSON object per play start, task start and task result to the file named
    by the IOT_REHEARSAL_EVENTS environment variable (nothing when it is unset).
requirements:
  - enabled through ANSIBLE_CALLBACKS_ENABLED
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "rehearsal_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._path = os.environ.get("IOT_REHEARSAL_EVENTS")
        self._play = None

    def _emit(self, **event) -> None:
        if not self._path:
            return
        event["t"] = time.time()
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, default=str) + "\n")

    @staticmethod
    def _role(task) -> str | None:
        role = getattr(task, "_role", None)
        return role.get_name(include_role_fqcn=False) if role else None

    def _name(self, task) -> str:
        """The task's name without the "<role> : " prefix Ansible prints."""
        name = task.get_name().strip()
        role = self._role(task)
        return name[len(role) + 3:] if role and name.startswith(f"{role} : ") else name

    # ---------------------------------------------------------------- plays and tasks
    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name().strip()
        self._emit(event="play", play=self._play, check_mode=bool(play.check_mode))

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._emit(event="task", play=self._play, role=self._role(task), task=self._name(task),
                   handler=False)

    def v2_playbook_on_handler_task_start(self, task):
        self._emit(event="task", play=self._play, role=self._role(task), task=self._name(task),
                   handler=True)

    # ---------------------------------------------------------------- results
    def _result(self, status: str, result) -> None:
        task = result._task
        res = result._result or {}
        changed_items = []
        for item in res.get("results", []) if isinstance(res.get("results"), list) else []:
            if isinstance(item, dict) and item.get("changed"):
                label = item.get("_ansible_item_label", item.get("item"))
                changed_items.append(label if isinstance(label, (str, int, float)) else json.dumps(label, default=str))
        self._emit(event="result", status=status, play=self._play, role=self._role(task),
                   task=self._name(task), handler=type(task).__name__ == "Handler",
                   host=result._host.get_name(),
                   changed=bool(res.get("changed")), changed_items=changed_items,
                   msg=str(res.get("msg", ""))[:500] if status in ("failed", "unreachable") else "")

    def v2_runner_on_ok(self, result):
        self._result("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_skipped(self, result):
        self._result("skipped", result)

    def v2_runner_on_unreachable(self, result):
        self._result("unreachable", result)

    def v2_playbook_on_stats(self, stats):
        recap = {host: stats.summarize(host) for host in sorted(stats.processed)}
        self._emit(event="stats", recap=recap)
