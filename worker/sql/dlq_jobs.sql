-- Replay jobs (worker/bus/dlq_jobs.py). Table: schemas/migrations/0015_dlq_jobs.sql. Every write of a
-- worker that runs a job is guarded by claimed_by (and status 'running'): a worker whose job another
-- took over writes nothing more to it.

-- name: dlq_job_enqueue
-- $1 action ('replay'), $2 actor, $3 filters (jsonb), $4 rate (NULL: unpaced)
INSERT INTO dlq_jobs (action, actor, filters, rate)
VALUES ($1, $2, $3, $4)
RETURNING id;

-- name: dlq_job_get
-- $1 id
SELECT * FROM dlq_jobs WHERE id = $1;

-- name: dlq_job_recent
-- The newest jobs first. $1 how many
SELECT * FROM dlq_jobs ORDER BY id DESC LIMIT $1;

-- name: dlq_job_cancel
-- Asks for a job's end: a queued one is cancelled at once (its audit row, if an earlier run opened
-- one, is closed too); a running one is stopped by its worker between two messages; a finished one
-- is left as it is. $1 id
WITH j AS (
    UPDATE dlq_jobs
    SET cancel_requested = cancel_requested OR status IN ('queued', 'running'),
        status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
        finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END
    WHERE id = $1
    RETURNING *
), closed AS (
    UPDATE dlq_actions a
    SET message_count = j.replayed, finished_at = now()
    FROM j
    WHERE a.id = j.action_id AND j.status = 'cancelled' AND a.finished_at IS NULL
)
SELECT * FROM j;

-- name: dlq_job_claim_lock
-- Taken in the claim's transaction before dlq_job_claim: one claim at a time across the workers, so
-- two of them never start two jobs at once. $1 lock id
SELECT pg_advisory_xact_lock($1);

-- name: dlq_job_claim
-- The oldest queued job, or a running one whose worker stopped beating (it died), unless a job is
-- running with a live worker: jobs run one at a time (a replay holds the dead queue while it runs).
-- $1 claimed_by, $2 seconds after which a heartbeat is stale. (clock_timestamp(): read after the
-- snapshot that saw the previous job end, so a job starts after the one before it finished.)
UPDATE dlq_jobs j
SET status = 'running',
    claimed_by = $1,
    heartbeat_at = clock_timestamp(),
    started_at = COALESCE(j.started_at, clock_timestamp()),
    runs = j.runs + 1
FROM (
    SELECT id
    FROM dlq_jobs
    WHERE (status = 'queued' OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => $2)))
      AND NOT EXISTS (
          SELECT 1 FROM dlq_jobs r
          WHERE r.status = 'running' AND r.heartbeat_at >= now() - make_interval(secs => $2)
      )
    ORDER BY id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
) pick
WHERE j.id = pick.id
RETURNING j.*;

-- name: dlq_job_set_action
-- The audit row of a job, opened by the worker that first runs it. $1 id, $2 claimed_by, $3 action_id
UPDATE dlq_jobs SET action_id = $3 WHERE id = $1 AND claimed_by = $2 AND status = 'running';

-- name: dlq_job_replayed_count
-- What a job published in its earlier runs (a resumed job starts counting from here). $1 action_id
SELECT count(*) FROM dlq_replayed WHERE action_id = $1;

-- name: dlq_job_heartbeat
-- The running worker is alive; answers whether someone asked to cancel (no row: the job is not this
-- worker's any more). $1 id, $2 claimed_by
UPDATE dlq_jobs SET heartbeat_at = now()
WHERE id = $1 AND claimed_by = $2 AND status = 'running'
RETURNING cancel_requested;

-- name: dlq_job_progress
-- How far the job got, and a heartbeat; answers as dlq_job_heartbeat.
-- $1 id, $2 claimed_by, $3 selected, $4 replayed, $5 already, $6 failed
UPDATE dlq_jobs
SET selected = $3::int, replayed = $4::int, already = $5::int, done = $4::int + $5::int, failed = $6::int,
    heartbeat_at = now()
WHERE id = $1 AND claimed_by = $2 AND status = 'running'
RETURNING cancel_requested;

-- name: dlq_job_finish
-- The job ended (done, failed, cancelled), with its counts; its audit row is closed in the same
-- statement. $1 id, $2 claimed_by, $3 status, $4 error, $5 selected, $6 replayed, $7 already, $8 failed
WITH j AS (
    UPDATE dlq_jobs
    SET status = $3, error = $4, selected = $5::int, replayed = $6::int, already = $7::int,
        done = $6::int + $7::int, failed = $8::int,
        finished_at = now(), heartbeat_at = now()
    WHERE id = $1 AND claimed_by = $2 AND status = 'running'
    RETURNING *
), closed AS (
    UPDATE dlq_actions a
    SET message_count = j.replayed, finished_at = now()
    FROM j
    WHERE a.id = j.action_id
)
SELECT * FROM j;

-- name: dlq_job_requeue
-- The worker is stopping (SIGTERM): the job is queued again, with how far it got, for the next
-- worker to resume. $1 id, $2 claimed_by, $3 selected, $4 replayed, $5 already, $6 failed
UPDATE dlq_jobs
SET status = 'queued', claimed_by = NULL, heartbeat_at = NULL,
    selected = $3::int, replayed = $4::int, already = $5::int, done = $4::int + $5::int, failed = $6::int
WHERE id = $1 AND claimed_by = $2 AND status = 'running'
RETURNING id;
