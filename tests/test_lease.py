"""The prefix lease's policy, on an injected clock: when it renews, when its holder must have stopped, when
a taker may replace it, what a 412 means. The store is in memory, with hooks for the failures S3 has."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from agentshards import InvalidReplica, LeaseError
from agentshards._replication.lease import Lease, LeaseConfig, LeaseInfo
from agentshards._replication.lease_keeper import LeaseKeeper
from agentshards._replication.objectstore import ConditionalWritesUnsupported, ObjectNotFound
from agentshards._replication.replica import ReplicaTarget, parse_replica

TARGET = parse_replica("s3://bucket/fleet", {"AWS_ENDPOINT_URL_S3": "http://s3.example:9000"})
TTL, MARGIN = 30.0, 5.0


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class MemoryStore:
    """Conditional writes as S3 does them (ETag = quoted MD5); ``before_put`` runs inside each PUT, after the
    server applied it or not, to model slow requests, lost answers and concurrent writers."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.before_put: Callable[[str, bytes], None] = lambda key, data: None
        self.after_put: Callable[[str, bytes, str | None], str | None] = lambda key, data, etag: etag

    @staticmethod
    def etag(data: bytes) -> str:
        return '"' + hashlib.md5(data).hexdigest() + '"'

    def put_if(self, key: str, data: bytes, expect: str | None) -> str | None:
        self.before_put(key, data)
        current = self.objects.get(key)
        if (current is not None if expect is None else current is None or self.etag(current) != expect):
            return self.after_put(key, data, None)
        self.objects[key] = data
        return self.after_put(key, data, self.etag(data))

    def get_etag(self, key: str) -> tuple[bytes, str]:
        if key not in self.objects:
            raise ObjectNotFound(key)
        return self.objects[key], self.etag(self.objects[key])

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def put(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None,
            sha256: bytes | None = None) -> None:
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        return self.get_etag(key)[0]

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]]:
        return self.get(key), {}

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def check(self) -> None:
        pass


def lease(store: MemoryStore, clock: Clock, *, owner: str = "node-a", take_over: bool = False,
          wall: float = 1.8e9) -> Lease:
    return Lease(store, TARGET, LeaseConfig(TTL, MARGIN, take_over=take_over), owner=owner, clock=clock,
                 sleep=clock.sleep, wall=lambda: wall)


def body(store: MemoryStore) -> LeaseInfo:
    return LeaseInfo.parse(store.objects[TARGET.lease_key()])


def test_renewal_is_due_a_third_of_the_ttl_after_the_last_one_started_and_the_deadline_counts_from_its_start() -> None:
    store, clock = MemoryStore(), Clock(1000.0)
    store.before_put = lambda key, data: clock.sleep(2.0)  # every request takes 2 s to be answered
    holder = lease(store, clock)
    holder.acquire()  # the probe's three PUTs took 6 s: the lease PUT started at 1006
    assert holder.deadline() == 1006.0 + TTL - MARGIN
    assert holder.renew_at() == 1006.0 + TTL / 3
    clock.now = holder.renew_at()
    holder.renew()
    assert clock.now == 1018.0  # answered 2 s later, but the holder counts from the request's start
    assert holder.deadline() == 1016.0 + TTL - MARGIN and holder.renew_at() == 1016.0 + TTL / 3


def test_a_renewal_that_fails_in_transit_does_not_move_the_deadline() -> None:
    store, clock = MemoryStore(), Clock()
    holder = lease(store, clock)
    holder.acquire()
    deadline = holder.deadline()
    clock.now = holder.renew_at()

    def unreachable(key: str, data: bytes) -> None:
        raise ConnectionRefusedError("S3 is unreachable")

    store.before_put = unreachable
    with pytest.raises(ConnectionRefusedError):
        holder.renew()
    assert holder.deadline() == deadline and holder.held  # not lost: the keeper tries again until the deadline


def test_bodies_carry_a_growing_sequence_number_and_the_terms_a_taker_needs() -> None:
    store, clock = MemoryStore(), Clock()
    holder = lease(store, clock)
    holder.acquire()
    seen = [body(store)]
    for _ in range(3):
        clock.now = holder.renew_at()
        holder.renew()
        seen.append(body(store))
    assert [b.seq for b in seen] == [1, 2, 3, 4]
    assert {(b.owner, b.ttl_s, b.margin_s) for b in seen} == {("node-a", TTL, MARGIN)}


def test_a_412_whose_stored_body_is_this_requests_body_is_success() -> None:
    """An HTTP retry of a conditional PUT that had succeeded gets 412: the stored body is ours, byte for byte."""
    store, clock = MemoryStore(), Clock()
    holder = lease(store, clock)
    holder.acquire()
    clock.now = holder.renew_at()
    started = clock.now
    store.after_put = lambda key, data, etag: None if key == TARGET.lease_key() else etag  # "retried", got 412
    holder.renew()
    assert body(store).seq == 2 and holder.deadline() == started + TTL - MARGIN
    store.after_put = lambda key, data, etag: etag
    clock.now = holder.renew_at()
    holder.renew()  # and the ETag it continues from is the stored one
    assert body(store).seq == 3


def test_a_renewal_whose_answer_was_lost_is_recognised_by_the_next_one() -> None:
    """The PUT landed but its answer did not: the next renewal's If-Match fails on our own earlier body."""
    store, clock = MemoryStore(), Clock()
    holder = lease(store, clock)
    holder.acquire()
    clock.now = first_try = holder.renew_at()

    def lost_answer(key: str, data: bytes, etag: str | None) -> str | None:
        raise ConnectionResetError("connection reset by peer")

    store.after_put = lost_answer
    with pytest.raises(ConnectionResetError):
        holder.renew()
    store.after_put = lambda key, data, etag: etag
    clock.sleep(1.0)
    holder.renew()
    assert body(store).seq == 2  # the landed body stays: this try's If-Match failed on it
    assert holder.deadline() == first_try + TTL - MARGIN


@pytest.mark.parametrize("replacer", ["another node", "a stale body of this owner"])
def test_a_412_with_any_other_body_is_a_loss(replacer: str) -> None:
    store, clock = MemoryStore(), Clock()
    holder = lease(store, clock)
    holder.acquire()
    other = {"owner": "node-b" if replacer == "another node" else "node-a", "seq": 7, "ttl_s": TTL,
             "margin_s": MARGIN, "expires_at": 1.8e9}
    store.objects[TARGET.lease_key()] = json.dumps(other, sort_keys=True).encode()
    clock.now = holder.renew_at()
    with pytest.raises(LeaseError, match=f"lost the lease on s3://bucket/fleet.*node {other['owner']}"):
        holder.renew()
    assert not holder.held


def test_a_lease_deleted_under_its_holder_is_lost() -> None:
    store, clock = MemoryStore(), Clock()
    holder = lease(store, clock)
    holder.acquire()
    store.delete(TARGET.lease_key())  # an operator's hand: a new node could take it at once
    clock.now = holder.renew_at()
    with pytest.raises(LeaseError, match="it was deleted"):
        holder.renew()


def test_without_take_over_a_held_lease_is_refused_naming_its_holder() -> None:
    store, clock = MemoryStore(), Clock()
    lease(store, clock).acquire()
    with pytest.raises(LeaseError, match="held by node node-a") as refused:
        lease(store, clock, owner="node-b").acquire()
    assert refused.value.hint is not None and "--take-over" in refused.value.hint


@pytest.mark.parametrize("holder_wall", [1.0e9, 4.0e9], ids=["expires_at long past", "expires_at far ahead"])
def test_a_taker_replaces_a_lease_only_after_its_etag_stayed_unchanged_for_ttl_plus_margin(holder_wall: float) -> None:
    """``expires_at`` (another machine's wall clock) is ignored either way: only the taker's own clock counts."""
    store = MemoryStore()
    lease(store, Clock(5.0), wall=holder_wall).acquire()  # the holder, then silent
    clock = Clock(1000.0)
    taken_at: list[float] = []
    store.before_put = lambda key, data: taken_at.append(clock.now) if key == TARGET.lease_key() else None
    taker = lease(store, clock, owner="node-b", take_over=True)
    taker.acquire()
    # its first PUT (If-None-Match) at 1000 failed and its GET saw the ETag at 1000; the take-over PUT came
    # only after TTL + margin more on its own clock
    assert taken_at == [1000.0, 1000.0 + TTL + MARGIN]
    assert body(store).owner == "node-b" and taker.held


def test_a_taker_waits_by_the_holders_terms_not_its_own() -> None:
    store = MemoryStore()
    Lease(store, TARGET, LeaseConfig(60.0, 10.0), owner="slow", clock=Clock(0.0)).acquire()
    clock = Clock(1000.0)
    Lease(store, TARGET, LeaseConfig(3.0, take_over=True), owner="quick", clock=clock, sleep=clock.sleep).acquire()
    assert clock.now >= 1000.0 + 60.0 + 10.0 and body(store).owner == "quick"


def test_a_holder_that_renews_while_watched_keeps_its_lease() -> None:
    store = MemoryStore()
    holder_clock, clock = Clock(0.0), Clock(1000.0)
    holder = lease(store, holder_clock)
    holder.acquire()
    taker = lease(store, clock, owner="node-b", take_over=True)

    def watching(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now - 1000.0 >= TTL / 3:  # the holder is alive: it renews on time
            holder_clock.now = holder.renew_at()
            holder.renew()

    taker.sleep = watching
    with pytest.raises(LeaseError, match=r"node node-a.*renewed the lease .* while this node watched it"):
        taker.acquire()
    assert body(store).owner == "node-a" and clock.now < 1000.0 + TTL + MARGIN


def test_a_fenced_holder_stops_before_a_taker_may_take_over() -> None:
    """The invariant both rules exist for, on one time line (both clocks tick at the same rate)."""
    store, clock = MemoryStore(), Clock(0.0)
    holder = lease(store, clock)
    holder.acquire()
    clock.now = holder.renew_at()
    holder.renew()  # its last successful renewal
    taker = lease(store, clock, owner="node-b", take_over=True)
    taker.acquire()
    assert holder.deadline() + 2 * MARGIN <= clock.now  # the taker wrote 2 x margin after the holder had to stop


def test_release_deletes_only_a_lease_still_held_within_the_deadline() -> None:
    store, clock = MemoryStore(), Clock()
    holder = lease(store, clock)
    holder.acquire()
    holder.release()
    assert TARGET.lease_key() not in store.objects
    holder = lease(store, clock)
    holder.acquire()
    clock.now = holder.deadline()  # past it, another node may own the prefix: leave the object alone
    holder.release()
    assert TARGET.lease_key() in store.objects


class IgnoresConditions(MemoryStore):
    """A server that accepts If-None-Match / If-Match on PUT and ignores them."""

    def put_if(self, key: str, data: bytes, expect: str | None) -> str | None:
        self.objects[key] = data
        return self.etag(data)


class RejectsConditions(MemoryStore):
    def put_if(self, key: str, data: bytes, expect: str | None) -> str | None:
        raise ConditionalWritesUnsupported("NotImplemented: A header you provided implies functionality that is "
                                           "not implemented")


@pytest.mark.parametrize("server", [IgnoresConditions, RejectsConditions])
def test_a_server_without_conditional_writes_is_refused_naming_it(server: type[MemoryStore]) -> None:
    store = server()
    with pytest.raises(InvalidReplica, match=r"s3://bucket/fleet at http://s3\.example:9000 (ignores|does not)"):
        lease(store, Clock()).acquire()
    assert store.objects == {}  # the probe cleaned up, and no lease was written


def test_lease_terms_leave_room_to_renew() -> None:
    assert LeaseConfig(30.0).margin == 5.0
    with pytest.raises(ValueError, match="margin_s must be in"):
        LeaseConfig(30.0, margin_s=20.0)


def test_the_keeper_renews_from_its_own_thread_and_fences_at_the_deadline(tmp_path: Path) -> None:
    """Real threads and time: nothing else in the process calls renew, and once renewals fail the fence
    fires at (start of the last successful renewal) + TTL - margin, not later."""
    store = MemoryStore()
    ttl, margin = 1.2, 0.3
    keeper = LeaseKeeper(Lease(store, ReplicaTarget("file", root=tmp_path), LeaseConfig(ttl, margin), owner="n"))
    fenced: list[tuple[float, LeaseError]] = []
    keeper.add_fence(lambda error: fenced.append((time.monotonic(), error)))
    starts: list[float] = []
    store.before_put = lambda key, data: starts.append(time.monotonic())
    keeper.acquire()
    try:
        deadline = time.monotonic() + 10
        while keeper.lease.seq < 4:  # this thread only waits: the renewals happen elsewhere
            assert time.monotonic() < deadline and not fenced, "the keeper did not renew on its own"
            time.sleep(0.01)
        outage = threading.Event()

        def refuse(key: str, data: bytes) -> None:
            if outage.is_set():
                raise ConnectionRefusedError("S3 is unreachable")
            starts.append(time.monotonic())

        store.before_put = refuse
        outage.set()
        last_ok = starts[-1]
        while not fenced:
            assert time.monotonic() < deadline, "the keeper never fenced the node"
            time.sleep(0.005)
        at, error = fenced[0]
        assert last_ok + ttl - margin - 0.01 <= at <= last_ok + ttl - margin + 0.25
        assert keeper.lost is error and "could not renew the lease" in error.message
        late: list[LeaseError] = []
        keeper.add_fence(late.append)  # a fence registered after the fact runs at once
        assert late == [error]
    finally:
        keeper.release()


def test_the_keeper_fences_at_once_when_another_node_replaced_the_lease(tmp_path: Path) -> None:
    store = MemoryStore()
    target = ReplicaTarget("file", root=tmp_path)
    keeper = LeaseKeeper(Lease(store, target, LeaseConfig(0.6), owner="n"))
    fenced = threading.Event()
    keeper.add_fence(lambda error: fenced.set())
    keeper.acquire()
    try:
        store.objects[target.lease_key()] = b'{"owner": "intruder", "seq": 1}'
        assert fenced.wait(0.6 / 3 + 0.3), "a lost lease did not fence the node at the next renewal"
        assert keeper.lost is not None and "intruder" in keeper.lost.message
    finally:
        keeper.release()
    assert store.objects[target.lease_key()] == b'{"owner": "intruder", "seq": 1}'  # not ours to delete

