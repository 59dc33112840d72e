"""How busy the machine is with OTHER processes while a benchmark runs (Linux /proc; None elsewhere)."""

from __future__ import annotations

import os
import time


class OtherLoad:
    """CPU time used by OTHER processes between ``start()`` and ``pct()``, as % of all CPUs (Linux only).

    A 2-core machine shared with another job gives noisy, unfair numbers (torch's 2-thread parallel regions
    suffer most): /proc/stat's busy time minus this process's own CPU time (and its child processes': GPT's
    shard workers) says how quiet the machine was."""

    def start(self):
        self.t0 = self._sample()
        return self

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        hz, own = os.sysconf("SC_CLK_TCK"), os.times()
        own = own.user + own.system + own.children_user + own.children_system + OtherLoad._children_ticks() / hz
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / hz, sum(v) / hz, own

    @staticmethod
    def _children_ticks():
        """CPU ticks (user + system) of this process's live children, from /proc/<pid>/stat."""
        me, ticks = os.getpid(), 0
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()  # after the name: state, ppid, ...
                except OSError:
                    continue
                if int(fields[1]) == me:
                    ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return ticks

    def pct(self):
        t1 = self._sample()
        if self.t0 is None or t1 is None or t1[1] <= self.t0[1]:
            return None
        busy, total, own = (b - a for a, b in zip(self.t0, t1))
        return round(max(0.0, 100 * (busy - own) / total), 1)


def background_busy(seconds=0.5):
    """Percent of all CPUs busy with other processes over ``seconds`` while this one sleeps."""
    load = OtherLoad().start()
    time.sleep(seconds)
    return load.pct()
