-- Each device's share of a document's actors is counted from the change
-- log when the document loads: an index by document and device keeps that
-- a range scan instead of a walk of the document's every change.
create index change_log_device on change_log(document_id, device_id, actor_id);
