-- The encoding job queue. Times are Unix epoch milliseconds from the
-- workers' clocks (keep the fleet's clocks in sync with NTP).
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    input TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    spec TEXT NOT NULL,
    store TEXT,
    state TEXT NOT NULL,
    runs BIGINT NOT NULL DEFAULT 1,
    max_attempts BIGINT NOT NULL,
    last_error TEXT,
    published TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    cleanup_lease_until BIGINT,
    cleaned_ms BIGINT
);
-- One active job per title: a second submission with other input or settings is refused.
CREATE UNIQUE INDEX jobs_one_active_per_title ON jobs (title) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_by_state ON jobs (state, created_ms);

CREATE TABLE tasks (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT,
    state TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    worker TEXT,
    lease_token TEXT,
    lease_until BIGINT,
    not_before BIGINT NOT NULL DEFAULT 0,
    started_ms BIGINT,
    finished_ms BIGINT,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX tasks_by_state ON tasks (state, not_before);
