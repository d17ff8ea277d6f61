//! Generates the Kotlin and Swift bindings, as CI does for the apps, and
//! checks that they declare the API the apps are written against: real
//! enums, the error hierarchy, the client and its async methods, the
//! observer and log sink interfaces, the custom types.
//!
//! The Kotlin is also compiled and run (`kotlin.rs`); Swift is not
//! installable here, so for Swift this check of the source is all.

use std::path::Path;

use anyhow::Context;

mod support;

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// No custom type may take a name the platform's standard library uses
/// (Swift imports Foundation's `Date` into every file).
fn assert_lacks(source: &str, file: &str, declarations: &[&str]) {
    let present: Vec<_> = declarations
        .iter()
        .filter(|d| source.contains(*d))
        .collect();
    assert!(present.is_empty(), "{file} declares {present:?}");
}

fn assert_declares(source: &str, file: &str, declarations: &[&str]) {
    let missing: Vec<_> = declarations
        .iter()
        .filter(|d| !source.contains(*d))
        .collect();
    assert!(missing.is_empty(), "{file} lacks {missing:?}");
}

#[tokio::test]
async fn kotlin_and_swift_bindings_declare_the_sdk_api() -> anyhow::Result<()> {
    let library = support::build_library().await?;
    let out = tempfile::tempdir()?;

    let kotlin = out.path().join("kotlin");
    support::generate(&library, "kotlin", &kotlin).await?;
    let ffi = read(&kotlin.join("uniffi/doorstep_ffi/doorstep_ffi.kt"))?;
    assert_declares(
        &ffi,
        "doorstep_ffi.kt",
        &[
            "package uniffi.doorstep_ffi",
            "open class DoorstepClient",
            "suspend fun `open`(`dataDir`: kotlin.String, `serverUrl`: kotlin.String",
            "suspend fun `recordVisit`(`visit`: NewVisit): RecordId",
            "suspend fun `updateMember`(`memberId`: RecordId, `update`: MemberUpdate)",
            "suspend fun `memberHistory`(`memberId`: RecordId): MemberHistory",
            "suspend fun `visits`(`month`: Month, `onlyMine`: kotlin.Boolean): List<VisitWithId>",
            "suspend fun `syncNow`(): SyncReport",
            "suspend fun `syncOnce`(`deadlineSecs`: kotlin.ULong, `cancellation`: SyncCancellation): SyncReport",
            "suspend fun `waitForFirstSync`(`deadlineSecs`: kotlin.ULong): kotlin.Boolean",
            "suspend fun `fetchHistory`(`deadlineSecs`: kotlin.ULong): HistoryFetch",
            "fun `observeSyncState`(`observer`: SyncStateObserver): Subscription",
            "public interface SyncStateObserver",
            "open class SyncCancellation",
            "var `missingMonths`: List<Month>",
            "fun `observeStatus`(`observer`: StatusObserver): Subscription",
            "suspend fun `shutdown`()",
            "suspend fun `rekey`(`keys`: KeyProvider): DoorstepClient",
            "suspend fun `storeSize`(): StoreSize",
            "fun `generateStoreKey`(): kotlin.ByteArray",
            "class Closed(",
            "class UnencryptedStore(",
            "sealed class DoorstepException: kotlin.Exception()",
            "class Invalid(",
            "val `field`: kotlin.String",
            "val `problem`: kotlin.String",
            "class ConflictChanged(",
            "val `now`: CurrentValues",
            "fun `values`(): List<ConflictValue>",
            "class Cancelled(",
            "public interface StatusObserver",
            "public interface LogSink",
            "fun `installLogSink`(`sink`: LogSink, `maxLevel`: LogLevel)",
            "enum class LogLevel",
            "sealed class MigrantUpdate",
            "var `hardshipEntries`: List<HardshipEntryWithId>",
            "open class Subscription",
        ],
    );
    let protocol = read(&kotlin.join("uniffi/doorstep_protocol/doorstep_protocol.kt"))?;
    assert_declares(
        &protocol,
        "doorstep_protocol.kt",
        &[
            "enum class VisitKind",
            "HOLIDAY_CONDOLENCE",
            "enum class MemberKind",
            "enum class HardshipStatus",
            "data class Member (",
            "data class Visit (",
            "public typealias CalendarDate = kotlin.String",
            "public typealias Fen = kotlin.Long",
            "public typealias RecordId = kotlin.String",
            "public typealias MemberKindSet = List<MemberKind>",
            "public typealias NeedsById = Map<RecordId, Need>",
        ],
    );
    assert_lacks(&protocol, "doorstep_protocol.kt", &["typealias Date "]);
    let client = read(&kotlin.join("uniffi/doorstep_client/doorstep_client.kt"))?;
    assert_declares(
        &client,
        "doorstep_client.kt",
        &[
            "data class NewVisit (",
            "sealed class SyncStatus",
            "sealed class Resolution",
            "data class Conflict (",
            "public typealias Count = kotlin.ULong",
            "data class SyncState (",
            "var `pendingChanges`: Count",
        ],
    );

    let swift = out.path().join("swift");
    support::generate(&library, "swift", &swift).await?;
    let ffi = read(&swift.join("doorstep_ffi.swift"))?;
    assert_declares(
        &ffi,
        "doorstep_ffi.swift",
        &[
            "open class DoorstepClient",
            "func recordVisit(visit: NewVisit) async throws  -> RecordId",
            "func memberHistory(memberId: RecordId) async throws  -> MemberHistory",
            "func observeStatus(observer: StatusObserver)  -> Subscription",
            "func shutdown() async throws",
            "func rekey(keys: KeyProvider) async throws  -> DoorstepClient",
            "public func generateStoreKey()",
            "func syncOnce(deadlineSecs: UInt64, cancellation: SyncCancellation) async throws  -> SyncReport",
            "func observeSyncState(observer: SyncStateObserver)  -> Subscription",
            "case Invalid(field: String, problem: String",
            "case ConflictChanged(field: String, now: CurrentValues",
            "enum DoorstepError: Swift.Error",
            "public protocol StatusObserver",
            "public protocol LogSink",
            "public func installLogSink(sink: LogSink, maxLevel: LogLevel)",
            "public enum MigrantUpdate",
            "public struct MemberHistory",
        ],
    );
    let protocol = read(&swift.join("doorstep_protocol.swift"))?;
    assert_declares(
        &protocol,
        "doorstep_protocol.swift",
        &[
            "public enum VisitKind",
            "public struct Member",
            "public typealias CalendarDate = String",
            "public typealias RecordId = String",
        ],
    );
    assert_lacks(&protocol, "doorstep_protocol.swift", &["typealias Date "]);
    for header in [
        "doorstep_ffiFFI.h",
        "doorstep_clientFFI.h",
        "doorstep_protocolFFI.h",
    ] {
        assert!(swift.join(header).exists(), "no {header}");
    }
    Ok(())
}
