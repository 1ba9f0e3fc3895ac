-- People who use the web UI: a username, a role (the API's roles) and an argon2id password
-- hash (PHC string). Their browser sessions are random secrets kept as SHA-256, each with its
-- own CSRF token.

create table users (
    id uuid primary key default gen_random_uuid(),
    username text not null unique check (username ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    role text not null check (role in ('admin', 'operator', 'client', 'viewer')),
    password_hash text not null check (password_hash like '$argon2id$%'),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    disabled_at timestamptz,
    last_login_at timestamptz,
    -- Wrong passwords in a row; at the limit the account waits until locked_until.
    failed_logins integer not null default 0 check (failed_logins >= 0),
    locked_until timestamptz
);

create table ui_sessions (
    id uuid primary key default gen_random_uuid(),
    secret_sha256 bytea not null unique check (length(secret_sha256) = 32),
    user_id uuid not null references users (id) on delete cascade,
    csrf_token text not null check (length(csrf_token) >= 32),
    created_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    -- Idle expiry, pushed forward as the session is used, never past max_expires_at.
    expires_at timestamptz not null,
    max_expires_at timestamptz not null,
    check (expires_at <= max_expires_at)
);

create index ui_sessions_user on ui_sessions (user_id);
create index ui_sessions_expiry on ui_sessions (max_expires_at);
