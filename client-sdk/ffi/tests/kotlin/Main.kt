// The generated Kotlin bindings, compiled and run on the JVM against a real
// server (driven by ../kotlin.rs): open, enroll, record offline, a typed
// validation error, a bounded background sync, the history read back.

import kotlinx.coroutines.runBlocking
import uniffi.doorstep_client.NewMember
import uniffi.doorstep_client.NewVisit
import uniffi.doorstep_ffi.DeviceOptions
import uniffi.doorstep_ffi.DoorstepClient
import uniffi.doorstep_ffi.DoorstepException
import uniffi.doorstep_ffi.KeyProvider
import uniffi.doorstep_ffi.SyncCancellation
import uniffi.doorstep_protocol.MemberKind
import uniffi.doorstep_protocol.VisitKind

class Keystore(private val key: ByteArray) : KeyProvider {
    override fun storeKey(): ByteArray? = key
}

fun visit(member: String, date: String, cashFen: Long) = NewVisit(
    date = date,
    memberId = member,
    kind = VisitKind.HOLIDAY_CONDOLENCE,
    visitors = listOf("志愿者小王"),
    aidCash = cashFen,
    aidGoods = 0L,
    goodsDescription = null,
    notes = null,
    followUp = null,
)

fun main(args: Array<String>) = runBlocking {
    val (url, dataDir, code, month) = args
    val client = DoorstepClient.open(dataDir, url, Keystore(ByteArray(32) { it.toByte() }), DeviceOptions())
    val enrollment = client.enroll(code)
    check(client.isEnrolled())
    val member = client.addMember(
        NewMember(
            name = "张秀英",
            kinds = listOf(MemberKind.HARDSHIP),
            birthday = "1950-03-02",
            phone = null,
            address = null,
            household = null,
            post = null,
            migrant = null,
            notes = null,
        )
    )
    val recorded = client.recordVisit(visit(member, "$month-02", 50_000L))
    try {
        client.recordVisit(visit(member, "2026-02-30", 1L))
        error("a date that does not exist was accepted")
    } catch (e: DoorstepException.Invalid) {
        check(e.field == "date") { "field ${e.field}: ${e.problem}" }
    }
    val report = client.syncOnce(60uL, SyncCancellation())
    check(report.documents >= 1uL) { "$report" }
    check(client.pendingChanges() == 0uL)
    val history = client.memberHistory(member)
    check(history.visits.map { it.id } == listOf(recorded)) { "${history.visits}" }
    check(history.aidTotal == 50_000L)
    client.shutdown()
    try {
        client.pendingChanges()
        error("a call after shutdown was answered")
    } catch (e: DoorstepException.Closed) {
    }
    println("{\"device\":\"${enrollment.deviceId}\",\"visit\":\"$recorded\"}")
}
