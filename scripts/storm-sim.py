#!/usr/bin/env python3
"""A boot storm, simulated from measured per-request costs (docs/scale.md).

Every machine of a site powers on within a window and network-boots plinth's inspection
ramdisk: PXE DHCP, the boot file by TFTP, iPXE's DHCP, the iPXE script, kernel and initrd over
HTTP, the kernel's boot, the ramdisk's DHCP, the agent's inspection and its report. Each step
needs CPU on a plinth instance, CPU on the database primary, bytes on an instance's network
link, or only time. Resources are first-come first-served queues (CPU: one server per core;
a link: one server at its rate), so the time for the whole storm (the makespan) is exact for
the model, while one machine's own time is an upper bound of what processor sharing gives it.

A DHCP exchange that waits longer than the client's retransmission timer (PXE ROMs: 4, 8, 16,
32 s) is sent again, and every copy costs the servers again: the storm's congestion collapse,
if the servers fall that far behind, is in the figures. On one segment (or behind relays that
forward to every instance) each DISCOVER reaches every instance and each makes an offer; the
client takes the first.

The costs are arguments with this machine's measured figures as defaults (docs/benchmarks.md,
docs/scale.md name where each comes from).

  scripts/storm-sim.py --machines 10000 --instances 3 --instance-cores 8 --db-cores 16 \
      --link-gbit 10 --window 60
  scripts/storm-sim.py --machines 1000 --instances 1 --shared-cores 2 ...   # this machine's run
"""
import argparse
import heapq
import json
import random


class Queue:
    """A first-come first-served queue with `servers` servers (cores, or one link)."""

    def __init__(self, servers):
        self.free = [0.0] * servers
        heapq.heapify(self.free)
        self.busy = 0.0

    def serve(self, at, demand):
        start = max(at, heapq.heappop(self.free))
        end = start + demand
        heapq.heappush(self.free, end)
        self.busy += demand
        return end


def simulate(a, seed=1):
    """Runs the storm: every machine is a generator of steps, resumed in time order (so each
    queue sees its arrivals in order, and first-come first-served is exact)."""
    rng = random.Random(seed)
    us = 1e-6
    if a.shared_cores:
        # plinth, PostgreSQL and the clients on the same cores (this machine's benchmark).
        shared = Queue(a.shared_cores)
        plinth = [shared] * a.instances
        db = shared
    else:
        plinth = [Queue(a.instance_cores) for _ in range(a.instances)]
        db = Queue(a.db_cores)
    links = [Queue(1) for _ in range(a.instances)]
    # tftp.max_transfers: a lock-step transfer holds a slot for as long as its client takes
    # (a round trip per block), whatever the CPU it needs.
    tftp_slots = [Queue(a.tftp_slots) for _ in range(a.instances)]
    link_bytes_per_s = a.link_gbit * 1e9 / 8
    timers = [4, 8, 16, 32, 64, 64, 64, 64]
    counts = {"dhcp_exchanges": 0, "dhcp_retransmissions": 0, "new_client_drops": 0}
    events, seq = [], [0]
    # dhcp.new_client_rate, per instance: a client it has not heard from is admitted while the
    # current one-second window has room; once admitted it is known (plinth_dhcp::NewClients).
    known = [set() for _ in range(a.instances)]
    window = [[0.0, 0] for _ in range(a.instances)]

    def admit(i, m, now):
        if a.new_client_rate == 0 or m in known[i]:
            return True
        if now - window[i][0] >= 1.0:
            window[i] = [now, 0]
        if window[i][1] >= a.new_client_rate:
            return False
        window[i][1] += 1
        known[i].add(m)
        return True

    def at(t, *ev):
        seq[0] += 1
        heapq.heappush(events, (t, seq[0]) + ev)

    def machine(m):
        yield ("wait", rng.uniform(0, a.window) + a.post)
        inst = yield ("dhcp",)  # the PXE ROM
        if a.shared_address:
            inst = 0  # the files come from the address's holder, whoever answered DHCP
        yield ("cpu", plinth[inst], a.boot_file_bytes / 2**20 * a.tftp_cpu_us_per_mib * us)
        yield ("cpu", tftp_slots[inst], a.tftp_secs)
        yield ("wait", a.boot_file_secs)
        inst = yield ("dhcp",)  # iPXE
        if a.shared_address:
            inst = 0
        yield ("cpu", plinth[inst], a.script_plinth_us * us)
        yield ("cpu", db, a.script_db_us * us)
        yield ("cpu", plinth[inst], a.ramdisk_bytes / 2**20 * a.http_cpu_us_per_mib * us)
        yield ("cpu", links[inst], a.ramdisk_bytes / link_bytes_per_s)
        yield ("wait", a.kernel_boot)
        if a.ramdisk_dhcp:
            yield ("dhcp",)  # the ramdisk
        yield ("wait", a.agent_collect)
        # The report goes where the script was fetched from (plinth.api is the script's base).
        yield ("cpu", plinth[inst], a.report_plinth_us * us)
        yield ("cpu", db, a.report_db_us * us)

    gens = [machine(m) for m in range(a.machines)]
    started = {}
    answered = {}
    done = []
    for m in range(a.machines):
        at(0.0, "resume", m, None)
    while events:
        ev = heapq.heappop(events)
        now, kind, m = ev[0], ev[2], ev[3]
        if kind == "resume":
            try:
                step = gens[m].send(ev[4])
            except StopIteration:
                done.append((now, started[m]))
                continue
            if step[0] == "wait":
                if m not in started:
                    started[m] = now + step[1]
                at(now + step[1], "resume", m, None)
            elif step[0] == "cpu":
                at(step[1].serve(now, step[2]), "resume", m, None)
            else:
                counts["dhcp_exchanges"] += 1
                answered[m] = None
                at(now, "dhcp_send", m, 0)
        elif kind == "dhcp_send":
            k = ev[4]
            if k:
                counts["dhcp_retransmissions"] += 1
            for i in range(a.instances):
                if not admit(i, m, now):
                    counts["new_client_drops"] += 1
                    continue
                at(plinth[i].serve(now, a.offer_plinth_us * us), "offer_db", m, i)
            # RFC 2131 4.1: the timer randomized by -1 to +1 s.
            at(now + timers[min(k, len(timers) - 1)] + rng.uniform(-1, 1), "dhcp_timer", m, k)
        elif kind == "dhcp_timer":
            if answered.get(m, 0) is None:
                at(now, "dhcp_send", m, ev[4] + 1)
        elif kind == "offer_db":
            # Which instance's offer reaches the client first is a race of batches and wires:
            # up to --offer-jitter-ms apart.
            jitter = rng.uniform(0, a.offer_jitter_ms / 1000)
            at(db.serve(now, a.offer_db_us * us) + jitter, "offer_done", m, ev[4])
        elif kind == "offer_done":
            if answered.get(m, 0) is None:
                chosen = ev[4]
                answered[m] = chosen
                # REQUEST: the chosen instance binds; the others see it and leave the offer be.
                at(plinth[chosen].serve(now, a.ack_plinth_us * us), "ack_db", m, chosen)
                for i in range(a.instances):
                    if i != chosen:
                        at(plinth[i].serve(now, a.other_plinth_us * us), "other_db", m, i)
        elif kind == "other_db":
            db.serve(now, a.other_db_us * us)
        elif kind == "ack_db":
            at(db.serve(now, a.ack_db_us * us), "resume", m, ev[4])
    makespan = max(t for t, _ in done)
    per = sorted(t - s for t, s in done)
    cpu_queues = list({id(q): q for q in plinth}.values())
    return {
        "machines": a.machines,
        "instances": a.instances,
        "all_reported_s": round(makespan, 1),
        "machines_per_min": round(a.machines / (makespan / 60)),
        "fastest_machine_s": round(per[0], 1),
        "median_machine_s": round(per[len(per) // 2], 1),
        "p95_machine_s": round(per[int(len(per) * 0.95)], 1),
        "slowest_machine_s": round(per[-1], 1),
        "dhcp_exchanges": counts["dhcp_exchanges"],
        "dhcp_retransmissions": counts["dhcp_retransmissions"],
        "new_client_drops": counts["new_client_drops"],
        "plinth_cpu_s_busiest_instance": round(max(q.busy for q in cpu_queues), 1),
        "db_cpu_s": None if a.shared_cores else round(db.busy, 1),
        "link_busy_s_busiest_instance": round(max(q.busy for q in links), 1),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--machines", type=int, default=10000)
    p.add_argument("--instances", type=int, default=3)
    p.add_argument("--instance-cores", type=int, default=8)
    p.add_argument("--db-cores", type=int, default=16)
    p.add_argument("--shared-cores", type=int, default=0, help="plinth and the database on the same N cores")
    p.add_argument("--link-gbit", type=float, default=10.0, help="each instance's link")
    p.add_argument("--window", type=float, default=60.0, help="seconds over which the machines reach PXE")
    p.add_argument("--new-client-rate", type=int, default=1000, help="dhcp.new_client_rate, per instance; 0: none")
    p.add_argument("--offer-jitter-ms", type=float, default=2.0, help="how far apart the instances' offers arrive")
    p.add_argument("--shared-address", action="store_true", help="one boot address (keepalived) for all instances: its holder serves every file")
    p.add_argument("--post", type=float, default=0.0, help="firmware time before PXE (added to every machine)")
    # Measured costs (docs/scale.md says where each comes from).
    p.add_argument("--offer-plinth-us", type=float, default=27.0)
    p.add_argument("--offer-db-us", type=float, default=72.0)
    p.add_argument("--ack-plinth-us", type=float, default=27.0)
    p.add_argument("--ack-db-us", type=float, default=71.0)
    p.add_argument("--other-plinth-us", type=float, default=15.0)
    p.add_argument("--other-db-us", type=float, default=20.0)
    p.add_argument("--boot-file-bytes", type=int, default=74213)
    p.add_argument("--boot-file-secs", type=float, default=0.5, help="iPXE starting after its download")
    p.add_argument("--tftp-cpu-us-per-mib", type=float, default=17000.0)
    p.add_argument("--tftp-secs", type=float, default=0.1, help="a lock-step transfer of the boot file, end to end")
    p.add_argument("--tftp-slots", type=int, default=512, help="tftp.max_transfers, per instance")
    p.add_argument("--script-plinth-us", type=float, default=87.0)
    p.add_argument("--script-db-us", type=float, default=571.0)
    p.add_argument("--ramdisk-bytes", type=int, default=19_800_000)
    p.add_argument("--http-cpu-us-per-mib", type=float, default=130.0)
    p.add_argument("--kernel-boot", type=float, default=15.0, help="seconds from initrd to the ramdisk's DHCP")
    p.add_argument("--ramdisk-dhcp", type=int, default=1, help="0: the ramdisk asks no lease (as plinth-lab storm)")
    p.add_argument("--agent-collect", type=float, default=2.0)
    p.add_argument("--report-plinth-us", type=float, default=300.0)
    p.add_argument("--report-db-us", type=float, default=1540.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = simulate(a)
    print(json.dumps(r) if a.json else "\n".join(f"{k}: {v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
