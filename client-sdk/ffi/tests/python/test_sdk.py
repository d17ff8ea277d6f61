"""The Doorstep SDK through its generated Python bindings, against a real server.

Run by `client-sdk/ffi/tests/python.rs`, which starts the server, generates the
bindings as the package `doorstep_sdk` in BINDINGS_DIR and passes two
enrollment codes. Prints one JSON line with what it recorded; any failure
raises (non-zero exit).
"""

import asyncio
import gc
import json
import os
import socket
import sys
import threading
import time
import uuid

sys.path.insert(0, os.environ["BINDINGS_DIR"])

from doorstep_sdk.doorstep_client import (  # noqa: E402
    EditState,
    LogRecordKind,
    MemberFilter,
    Months,
    NewFundEntry,
    NewHardshipEntry,
    NewMember,
    NewTeam,
    NewTraining,
    NewVisit,
    VisitDays,
)
from doorstep_sdk.doorstep_ffi import (  # noqa: E402
    BirthdayUpdate,
    DeviceOptions,
    DoorstepClient,
    DoorstepError,
    KeyProvider,
    LogLevel,
    LogSink,
    MemberUpdate,
    MigrantUpdate,
    StatusObserver,
    SyncCancellation,
    SyncStateObserver,
    VisitsListener,
    export_unsynced_from_store,
    generate_store_key,
    install_log_sink,
)
from doorstep_sdk.doorstep_protocol import (  # noqa: E402
    FollowUp,
    FundDirection,
    TrainingLevel,
    HardshipKind,
    HardshipStatus,
    MemberKind,
    MigrantContact,
    VisitKind,
)


class Recorder(StatusObserver):
    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()

    def on_status(self, status):
        with self.lock:
            self.seen.append(status)

    def count(self):
        with self.lock:
            return len(self.seen)


class States(SyncStateObserver):
    """Keeps every sync state pushed; `wait_for` blocks on the next."""

    def __init__(self):
        self.seen = []
        self.changed = threading.Condition()

    def on_sync_state(self, state):
        with self.changed:
            self.seen.append(state)
            self.changed.notify_all()

    def wait_for(self, predicate, timeout=30):
        with self.changed:
            return self.changed.wait_for(lambda: any(predicate(s) for s in self.seen), timeout)


def pipe(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Proxy:
    """Forwards to the server while `forward` is set; after that it accepts
    connections and never answers (a server that hangs)."""

    def __init__(self, url):
        self.upstream = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        self.forward = True
        self.held = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        threading.Thread(target=self.accept, daemon=True).start()

    def url(self):
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def accept(self):
        while True:
            conn, _ = self.listener.accept()
            if not self.forward:
                self.held.append(conn)
                continue
            upstream = socket.create_connection(self.upstream)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()


class Logs(LogSink):
    def __init__(self):
        self.lines = []
        self.lock = threading.Lock()

    def log(self, level, target, message):
        with self.lock:
            self.lines.append((level, target, message))

    def snapshot(self):
        with self.lock:
            return list(self.lines)


class Keystore(KeyProvider):
    """Stands in for the Android Keystore / iOS Keychain."""

    def __init__(self, key):
        self.key = key

    def store_key(self):
        return self.key


class VisitLists(VisitsListener):
    """Keeps every list a live query sent; `wait_for` blocks on the next."""

    def __init__(self):
        self.lists = []
        self.changed = threading.Condition()

    def on_visits(self, visits):
        with self.changed:
            self.lists.append([v.id for v in visits])
            self.changed.notify_all()

    def wait_for(self, predicate, timeout=30):
        with self.changed:
            return self.changed.wait_for(lambda: any(predicate(ids) for ids in self.lists), timeout)


def options():
    return DeviceOptions(
        extra_ca_pem=None, sync_interval_secs=0, max_loaded_months=3, receive_timeout_secs=90, backoff_max_secs=60
    )


def visit(member_id, date, cash_fen, goods_fen=0, follow_up=None):
    return NewVisit(
        date=date,
        member_id=member_id,
        kind=VisitKind.HOLIDAY_CONDOLENCE,
        visitors=["志愿者小王"],
        aid_cash=cash_fen,
        aid_goods=goods_fen,
        goods_description=None,
        notes=None,
        follow_up=follow_up,
    )


def uuid7():
    """A UUIDv7 as an app makes one (Python's own `uuid.uuid7` is 3.14+)."""
    millis = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | (((rand >> 62) & 0xFFF) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def update(**fields):
    """A member update that changes only `fields`."""
    base = dict(birthday=BirthdayUpdate.KEEP(), migrant=MigrantUpdate.KEEP())
    base.update(fields)
    return MemberUpdate(**base)


async def main():
    url = os.environ["DOORSTEP_URL"]
    data = os.environ["DATA_DIR"]
    month = os.environ["MONTH"]

    # The most verbose level an app may ask for: nothing secret may reach
    # it even so (checked at the end over every line of the whole run).
    logs = Logs()
    install_log_sink(logs, LogLevel.TRACE)
    try:
        install_log_sink(Logs(), LogLevel.DEBUG)
    except DoorstepError.Invalid:
        pass
    else:
        raise AssertionError("a second log sink was installed")

    # No key from the keystore: nothing is opened.
    try:
        await DoorstepClient.open(os.path.join(data, "phone"), url, Keystore(None), options())
    except DoorstepError.Storage:
        pass
    else:
        raise AssertionError("opened without a key")
    phone = await DoorstepClient.open(os.path.join(data, "phone"), url, Keystore(bytes(range(32))), options())
    # The wrong key does not open it (the same process shares the instance
    # only for the same key).
    try:
        await DoorstepClient.open(os.path.join(data, "phone"), url, Keystore(bytes(32)), options())
    except DoorstepError.AlreadyOpen:
        pass
    else:
        raise AssertionError("opened twice with another key")
    recorder = Recorder()
    subscription = phone.observe_status(recorder)
    enrollment = await phone.enroll(os.environ["CODE_PHONE"])
    # Asked again (the app never saw the answer), the same enrollment.
    assert (await phone.enroll(os.environ["CODE_PHONE"])).device_id == enrollment.device_id
    states = States()
    state_subscription = phone.observe_sync_state(states)
    assert not await phone.wait_for_first_sync(0), "never synced yet"
    assert enrollment.device_id and enrollment.branch_id, enrollment
    assert phone.is_enrolled()

    # Offline work: nothing below talks to the server.
    member = await phone.add_member(
        NewMember(
            name="张秀英",
            kinds=[MemberKind.RETIRED, MemberKind.HARDSHIP],
            birthday="1950-03-02",
            phone="13700000000",
            address=None,
            household=None,
            post=None,
            notes=None,
            migrant=MigrantContact(workplace="深圳某厂", card_no="L-017", contact_phone=None, family_contact="女儿"),
        )
    )
    await phone.update_member(member, update(birthday=BirthdayUpdate.SET(birthday="1950-03-03")))
    migrant = await phone.add_member(
        NewMember(
            name="李建国",
            kinds=[MemberKind.MIGRANT],
            birthday=None,
            phone=None,
            address=None,
            household=None,
            post=None,
            notes=None,
            migrant=MigrantContact(workplace="东莞", card_no=None, contact_phone=None, family_contact=None),
        )
    )
    # The migrant card can be cleared, and "keep" leaves it alone.
    await phone.update_member(migrant, update(name="李建国 (已返乡)"))
    assert (await phone.member(migrant)).migrant.workplace == "东莞"
    await phone.update_member(migrant, update(migrant=MigrantUpdate.CLEAR(), kinds=[]))
    back_home = await phone.member(migrant)
    assert back_home.migrant is None and back_home.kinds == [], back_home

    entry = await phone.open_hardship_entry(
        NewHardshipEntry(member_id=member, kind=HardshipKind.ILLNESS, opened_on=f"{month}-01", needs=["药费"])
    )
    await phone.change_hardship_status(entry, HardshipStatus.HELPED, f"{month}-05", "已送药")

    # A visit under the app's own id: the app's retry (it never saw the
    # first answer) is the same record, counted once below.
    app_id = uuid7()
    assert await phone.record_visit_with_id(app_id, visit(member, f"{month}-09", 30_000)) == app_id
    assert await phone.record_visit_with_id(app_id, visit(member, f"{month}-09", 30_000)) == app_id
    visits = [
        await phone.record_visit(visit(member, f"{month}-02", 50_000, 12_000)),
        app_id,
        await phone.record_visit(
            visit(member, f"{month}-16", 0, 8_000, follow_up=FollowUp(due=f"{month}-20", action="送药", done=False))
        ),
    ]
    assert await phone.pending_changes() > 0

    # Bad input writes nothing: a broken rule is a typed error naming the
    # field; a value that is not a date or an id at all fails as it crosses,
    # as the same typed error naming the kind of value and quoting it.
    pending = await phone.pending_changes()
    try:
        await phone.record_visit(visit(member, f"{month}-03", -1))
    except DoorstepError.Invalid as e:
        assert e.field == "aid_cash", (e.field, e.problem)
    else:
        raise AssertionError("negative aid accepted")
    for bad, field, text in (
        (visit(member, "2026-02-30", 1), "date", "2026-02-30"),
        (visit("not-an-id", f"{month}-03", 1), "record id", "not-an-id"),
    ):
        try:
            await phone.record_visit(bad)
        except DoorstepError.Invalid as e:
            assert e.field == field and text in e.problem, (e.field, e.problem)
        else:
            raise AssertionError("bad value accepted")
    try:
        await phone.follow_ups_due("yesterday")
    except DoorstepError.Invalid as e:
        assert e.field == "date", (e.field, e.problem)
    else:
        raise AssertionError("a bad date argument accepted")
    assert await phone.pending_changes() == pending

    # Every record type reads back; a log record is corrected and deleted.
    team = await phone.create_team(NewTeam(name="帮扶队", category="志愿服务", founded_on=None))
    assert [t.id for t in await phone.teams()] == [team]
    training = await phone.record_training(
        NewTraining(date=f"{month}-04", level=TrainingLevel.COMMUNITY, topic="政策", attendance=12, attendees=[])
    )
    assert [t.id for t in await phone.trainings(Months.ONE(month))] == [training]
    fund = await phone.record_fund_entry(
        NewFundEntry(date=f"{month}-05", direction=FundDirection.DONATION, amount=100_00, member_id=None, purpose="会费", note=None)
    )
    await phone.correct_fund_entry(
        fund,
        NewFundEntry(date=f"{month}-05", direction=FundDirection.DONATION, amount=120_00, member_id=None, purpose="会费", note=None),
        "金额输错",
    )
    assert [f.entry.amount for f in await phone.fund_entries(Months.ALL())] == [120_00]
    assert [c.why for c in await phone.corrections_of(fund)] == ["金额输错"]
    mistaken = await phone.record_visit(visit(member, f"{month}-03", 1_00))
    await phone.delete_log_record(LogRecordKind.VISIT, mistaken, "重复录入")
    assert mistaken not in [v.id for v in await phone.visits(month, False)]
    assert await phone.edit_state(visits[0]) == EditState.LOCAL

    logged_before_sync = len(logs.snapshot())
    report = await phone.sync_now()
    assert report.documents >= 2, report
    assert await phone.pending_changes() == 0
    assert phone.status().is_UP_TO_DATE(), phone.status()
    assert len(logs.snapshot()) > logged_before_sync, "no log line during sync"
    due = await phone.follow_ups_due(f"{month}-28")
    assert [v.id for v in due] == [visits[2]], due

    # The server's view, read back by a second device of the branch.
    office = await DoorstepClient.open(os.path.join(data, "office"), url, Keystore(bytes(range(1, 33))), options())
    await office.enroll(os.environ["CODE_OFFICE"])
    await office.sync_now()
    seen = await office.visits(month, False)
    assert sorted(v.id for v in seen) == sorted(visits), seen
    assert seen[0].visit.kind == VisitKind.HOLIDAY_CONDOLENCE
    history = await office.member_history(member)
    assert history.member.name == "张秀英"
    assert history.aid_total == 50_000 + 12_000 + 30_000 + 8_000, history.aid_total
    # Kinds are a set, in the schema's order whatever order they were given.
    assert history.member.kinds == [MemberKind.HARDSHIP, MemberKind.RETIRED], history.member.kinds
    assert history.member.birthday == "1950-03-03"
    assert history.member.migrant.workplace == "深圳某厂" and history.member.migrant.family_contact == "女儿"
    assert history.visits[0].visit.goods_description is None
    assert [e.id for e in history.hardship_entries] == [entry], history.hardship_entries
    assert history.hardship_entries[0].entry.kind == HardshipKind.ILLNESS
    assert [n.description for n in history.hardship_entries[0].entry.needs.values()] == ["药费"]
    assert history.hardship_status == HardshipStatus.HELPED, history.hardship_status
    assert history.missing_months == [], history.missing_months
    fetched = await office.fetch_history(30)
    assert fetched.fetched == [] and fetched.missing == [], fetched
    in_hardship = await office.members(MemberFilter(in_hardship=True, migrant=False, no_post=False, name_contains=None))
    assert [m.id for m in in_hardship] == [member], in_hardship
    assert await office.visits(month, True) == [], "the office recorded none itself"

    # The checkpoint: everything on the phone is on the server, and counted.
    checkpoint = await phone.checkpoint()
    assert checkpoint.safe and checkpoint.unsynced_changes == 0, checkpoint
    assert await phone.edit_state(visits[0]) == EditState.COUNTED

    # A live list on the office gets the phone's next visit by push: the
    # office holds a live connection, with re-checks turned off.
    lists = VisitLists()
    observation = office.observe_visits(VisitDays.MONTH(month), lists)
    assert lists.wait_for(lambda ids: sorted(ids) == sorted(visits)), lists.lists
    office.start_background_sync()
    # The platform's connectivity callback: harmless while connected.
    office.network_available()
    pushed = await phone.record_visit(visit(member, f"{month}-23", 5_00))
    await phone.sync_now()
    arrived = await asyncio.get_running_loop().run_in_executor(None, lists.wait_for, lambda ids: pushed in ids)
    assert arrived, lists.lists
    observation.cancel()
    await office.stop_background_sync()
    visits.append(pushed)

    # A dropped subscription stops observing, as a cancelled one does.
    dropped = Recorder()
    handle = office.observe_status(dropped)
    await office.sync_now()
    assert dropped.count() >= 2, dropped.seen
    del handle
    gc.collect()
    after_drop = dropped.count()
    await office.sync_now()
    assert dropped.count() == after_drop, dropped.seen

    # The sync state was pushed: pending edits, then none, and a last sync.
    assert states.wait_for(lambda s: s.pending_changes > 0), states.seen
    assert states.wait_for(lambda s: s.pending_changes == 0 and s.last_synced_at_unix_secs is not None), states.seen
    state_subscription.cancel()
    assert await phone.wait_for_first_sync(0)

    # Background work: one bounded sync, within its deadline against a
    # server that accepts and never answers, and cancellable.
    proxy = Proxy(url)
    worker = await DoorstepClient.open(os.path.join(data, "worker"), proxy.url(), Keystore(bytes(range(2, 34))), options())
    await worker.enroll(os.environ["CODE_WORKER"])
    report = await worker.sync_once(60, SyncCancellation())
    assert report.documents >= 1, report
    proxy.forward = False
    started = time.monotonic()
    try:
        await worker.sync_once(2, SyncCancellation())
    except DoorstepError.Network:
        pass
    else:
        raise AssertionError("a sync against a silent server succeeded")
    took = time.monotonic() - started
    assert took < 10, f"past its deadline: {took:.1f} s"
    cancellation = SyncCancellation()
    asyncio.get_running_loop().call_later(0.5, cancellation.cancel)
    started = time.monotonic()
    try:
        await worker.sync_once(120, cancellation)
    except DoorstepError.Cancelled:
        pass
    else:
        raise AssertionError("a cancelled sync succeeded")
    took = time.monotonic() - started
    assert took < 10, f"not stopped when cancelled: {took:.1f} s"
    assert not worker.status().is_SYNCING(), worker.status()
    assert proxy.held, "the worker never reached the silent server"

    subscription.cancel()
    with recorder.lock:
        seen = list(recorder.seen)
    # The status channel keeps only the newest status, so a short Syncing
    # may be replaced before the listener runs (expecting it made this test
    # flaky); what must arrive is the status things settled in.
    assert seen and any(s.is_UP_TO_DATE() for s in seen), seen

    # Lifecycle: the store's size, a re-key, close, and an open again at once.
    size = await phone.store_size()
    assert 0 < size.chunk_bytes <= size.bytes_on_disk, size
    new_key = generate_store_key()
    assert len(new_key) == 32 and new_key != generate_store_key()
    old_phone = phone
    phone = await old_phone.rekey(Keystore(new_key))
    try:
        await old_phone.pending_changes()
    except DoorstepError.Closed:
        pass
    else:
        raise AssertionError("a re-keyed client still answered")
    assert (await phone.member(member)).name == "张秀英"
    await phone.shutdown()
    try:
        await phone.store_size()
    except DoorstepError.Closed:
        pass
    else:
        raise AssertionError("a closed client answered")
    try:
        await DoorstepClient.open(os.path.join(data, "phone"), url, Keystore(bytes(range(32))), options())
    except DoorstepError.WrongKey:
        pass
    else:
        raise AssertionError("the old key still opens the store")
    # Closed, the directory is free: the export reads it as is.
    exported = json.loads(bytes(await export_unsynced_from_store(os.path.join(data, "phone"), Keystore(new_key))))
    assert exported["format"] == "doorstep-unsynced-edits/1", exported
    phone = await DoorstepClient.open(os.path.join(data, "phone"), url, Keystore(new_key), options())
    assert (await phone.member(member)).name == "张秀英"
    await phone.shutdown()

    # Nothing secret reaches the logs of the whole run, written or as hex:
    # no store key (sqlx logs the statements it runs, the keying pragma
    # among them, unless told not to), no enrollment code, no bearer
    # header, and nothing a member's record holds (WebSocket and HTTP
    # libraries log whole frames and headers at TRACE).
    secrets = [bytes(range(32)).hex(), bytes(new_key).hex()]
    for text in (
        os.environ["CODE_PHONE"],
        os.environ["CODE_OFFICE"],
        os.environ["CODE_WORKER"],
        "张秀英",
        "李建国",
        "13700000000",
        "深圳某厂",
        "L-017",
        "志愿者小王",
    ):
        secrets += [text.lower(), text.encode().hex()]
    lines = logs.snapshot()
    for level, target, message in lines:
        text = f"{target} {message}".lower()
        leaked = [secret for secret in secrets if secret in text]
        assert not leaked, (level, target, message[:200], leaked)
        assert "bearer " not in text, (level, target, message[:200])

    print(f"log lines: {len(logs.snapshot())}, targets: {sorted({t for _, t, _ in logs.snapshot()})}", file=sys.stderr)
    print(json.dumps({"member": member, "visits": visits}))


asyncio.run(main())
# The SDK's threads go on logging into the sink (sqlx closing its pool) while
# the interpreter finalizes, and CPython aborts a foreign thread that calls
# in then ("exception not rethrown"). An app's process does not finalize
# like this; the test leaves without finalizing.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
