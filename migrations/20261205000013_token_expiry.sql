-- API tokens can expire (issue 17): a token past expires_at is refused like a revoked one.
alter table api_tokens add column expires_at timestamptz;
alter table api_tokens add constraint api_tokens_expiry_after_creation
    check (expires_at is null or expires_at > created_at);
