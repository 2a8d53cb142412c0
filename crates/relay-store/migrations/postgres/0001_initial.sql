-- The first schema of the relay, PostgreSQL flavour.
--
-- Conventions shared by the three dialects: times are BIGINT unix milliseconds, booleans are
-- INTEGER 0/1, JSON documents are TEXT, money is DOUBLE. Every statement ends with a semicolon
-- at the end of a line: the migration runner splits on that, so no semicolon may appear inside
-- a statement.

CREATE TABLE relay_groups (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    fallback TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX relay_groups_name_unique ON relay_groups (name);

CREATE TABLE relay_accounts (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    platform VARCHAR(32) NOT NULL,
    base_url TEXT NOT NULL,
    group_id BIGINT NOT NULL,
    priority INTEGER NOT NULL,
    weight BIGINT NOT NULL,
    enabled INTEGER NOT NULL,
    proxy_url TEXT NULL,
    model_allowlist TEXT NOT NULL,
    model_mapping TEXT NOT NULL,
    max_concurrency BIGINT NULL,
    credential_kind VARCHAR(16) NOT NULL,
    credential_api_key TEXT NULL,
    oauth_access_token TEXT NULL,
    oauth_refresh_token TEXT NULL,
    oauth_expires_at BIGINT NULL,
    usage_requests BIGINT NOT NULL DEFAULT 0,
    usage_input_tokens BIGINT NOT NULL DEFAULT 0,
    usage_output_tokens BIGINT NOT NULL DEFAULT 0,
    usage_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    last_used_at BIGINT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT relay_accounts_group_fk FOREIGN KEY (group_id) REFERENCES relay_groups (id) ON DELETE RESTRICT
);

CREATE INDEX relay_accounts_group_id ON relay_accounts (group_id);

CREATE TABLE relay_api_keys (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    group_id BIGINT NOT NULL,
    key_hash VARCHAR(128) NOT NULL,
    key_prefix VARCHAR(64) NOT NULL,
    enabled INTEGER NOT NULL,
    expires_at BIGINT NULL,
    model_allowlist TEXT NOT NULL,
    daily_cost_limit_usd DOUBLE PRECISION NULL,
    rpm_limit BIGINT NULL,
    usage_requests BIGINT NOT NULL DEFAULT 0,
    usage_input_tokens BIGINT NOT NULL DEFAULT 0,
    usage_output_tokens BIGINT NOT NULL DEFAULT 0,
    usage_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    last_used_at BIGINT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT relay_api_keys_group_fk FOREIGN KEY (group_id) REFERENCES relay_groups (id) ON DELETE RESTRICT
);

CREATE UNIQUE INDEX relay_api_keys_key_hash_unique ON relay_api_keys (key_hash);

CREATE INDEX relay_api_keys_group_id ON relay_api_keys (group_id);

-- One row per attempt. No foreign keys: the history outlives deleted accounts and keys.
CREATE TABLE relay_usage (
    id BIGSERIAL PRIMARY KEY,
    request_id VARCHAR(128) NOT NULL,
    attempt BIGINT NOT NULL,
    api_key_id BIGINT NULL,
    group_id BIGINT NULL,
    account_id BIGINT NULL,
    model TEXT NOT NULL,
    is_stream INTEGER NOT NULL,
    http_status INTEGER NULL,
    outcome_class VARCHAR(64) NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_input_tokens BIGINT NOT NULL,
    cache_creation_input_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    duration_ms BIGINT NOT NULL,
    ttfb_ms BIGINT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX relay_usage_created_at ON relay_usage (created_at);

CREATE INDEX relay_usage_api_key_created_at ON relay_usage (api_key_id, created_at);

CREATE INDEX relay_usage_account_created_at ON relay_usage (account_id, created_at);

CREATE INDEX relay_usage_group_created_at ON relay_usage (group_id, created_at);

CREATE INDEX relay_usage_request_id ON relay_usage (request_id);

CREATE TABLE relay_settings (
    setting_key VARCHAR(191) NOT NULL PRIMARY KEY,
    setting_value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
