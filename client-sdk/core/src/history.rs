//! A branch's whole history on a device that joined late.
//!
//! A new phone syncs the roster and the current and previous month; older
//! monthly logs stay on the server until asked for. The device learns from
//! the server which months exist (the enrollment answer lists them, and
//! [`Client::fetch_history`] asks again), so reads spanning months can say
//! what they lack ([`MemberHistory::missing_months`](crate::MemberHistory)),
//! and `fetch_history` brings the missing months over, one at a time so
//! memory stays within `max_loaded_months` however long the history.

use std::collections::BTreeSet;

use doorstep_protocol::Month;
use doorstep_protocol::schema::DocumentKind;
use serde::Deserialize;

use crate::client::Client;
use crate::error::ClientError;

/// The store's key for the months the server said it holds.
const SERVER_MONTHS: &str = "server_months";

/// What [`Client::fetch_history`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct HistoryFetch {
    /// Months brought over, newest first.
    pub fetched: Vec<Month>,
    /// Months the server holds that are still not on this device (the
    /// deadline passed, or the link broke): call again.
    pub missing: Vec<Month>,
}

/// One entry of the server's document list; only its month matters here.
#[derive(Deserialize)]
pub(crate) struct ListedMonth {
    #[serde(default)]
    month: Option<String>,
}

/// The months a document list names (malformed entries skipped: the list
/// is a hint, each month is checked when opened).
pub(crate) fn months_of(listed: &[ListedMonth]) -> BTreeSet<Month> {
    listed
        .iter()
        .filter_map(|l| l.month.as_deref()?.parse().ok())
        .collect()
}

impl Client {
    /// Keeps the months the server said it holds.
    pub(crate) async fn remember_server_months(
        &self,
        months: &BTreeSet<Month>,
    ) -> Result<(), ClientError> {
        let text: Vec<String> = months.iter().map(ToString::to_string).collect();
        self.inner
            .store
            .set_meta(&[(SERVER_MONTHS, &text.join(","))])
            .await
    }

    /// Months the server holds (as last heard) that this device does not,
    /// newest first: what a read spanning months lacks.
    pub async fn missing_months(&self) -> Result<Vec<Month>, ClientError> {
        let server: BTreeSet<Month> = self
            .inner
            .store
            .meta(SERVER_MONTHS)
            .await?
            .unwrap_or_default()
            .split(',')
            .filter_map(|m| m.parse().ok())
            .collect();
        let held: BTreeSet<Month> = {
            let mut guard = self.replicas().await?;
            let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
            replicas
                .all()
                .await?
                .into_iter()
                .filter_map(|(_, kind)| match kind {
                    DocumentKind::MonthlyLog(month) => Some(month),
                    DocumentKind::Roster => None,
                })
                .collect()
        };
        let mut missing: Vec<Month> = server.difference(&held).copied().collect();
        missing.reverse();
        Ok(missing)
    }

    /// Asks the server which months it holds and brings over those this
    /// device lacks, newest first, each synced before the next is opened.
    /// Bounded by `limit` as a whole (each month's sync too): what is
    /// left is in `missing`. For a background task, or a "load older
    /// history" button; reads need no network and say what they lack.
    pub async fn fetch_history(
        &self,
        limit: std::time::Duration,
    ) -> Result<HistoryFetch, ClientError> {
        let limit = limit.min(std::time::Duration::from_secs(86_400));
        let deadline = tokio::time::Instant::now() + limit;
        let listed = tokio::time::timeout_at(deadline, self.list_server_months())
            .await
            .map_err(|_| ClientError::Network("listing months timed out".into()))??;
        self.remember_server_months(&listed).await?;
        let mut fetch = HistoryFetch {
            fetched: Vec::new(),
            missing: self.missing_months().await?,
        };
        while let Some(&month) = fetch.missing.first() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            self.open_month(month).await?;
            if let Err(e) = self.sync_within(left).await {
                // What arrived stays; the rest is reported, not lost.
                tracing::debug!(%month, error = %e, "fetching an older month stopped");
                break;
            }
            fetch.missing.remove(0);
            fetch.fetched.push(month);
        }
        Ok(fetch)
    }

    async fn list_server_months(&self) -> Result<BTreeSet<Month>, ClientError> {
        let identity = self.identity()?;
        let listed: Vec<ListedMonth> = self
            .inner
            .transport
            .device_documents(&identity.token)
            .await?;
        Ok(months_of(&listed))
    }
}
