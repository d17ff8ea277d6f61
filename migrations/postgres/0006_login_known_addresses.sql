-- Addresses an account has logged in from. Failed logins against one
-- account from many addresses are slowed account-wide, except from the
-- addresses its owner used before: guessing is bounded per account without
-- a lockout anyone could trigger against the owner.
create table login_known_addresses (
    account text not null,
    address text not null,
    last_success_at bigint not null,
    primary key (account, address)
);
