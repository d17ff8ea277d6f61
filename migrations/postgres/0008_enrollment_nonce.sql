-- The device's enrollment nonce (SHA-256 of it), stored when its code is
-- spent: the same code presented again with the same nonce is the same
-- device retrying after the response was lost, and gets its enrollment
-- again instead of "code already used" (which would strand the phone).
alter table enrollment_codes add column device_nonce_hash bytea;
