-- Replay jobs: a long replay as a row that a worker runs (worker/bus/dlq_jobs.py), so that neither a
-- closed browser tab, a closed terminal, nor the broker's consumer_timeout cuts it off. Created by
-- `paw dlq replay --job` (and the console); every worker polls for queued jobs and runs one at a time
-- across the deployment (a replay holds the dead queue). The job's audit row is in dlq_actions
-- (action_id), written by the worker that runs it, with the job's actor.
CREATE TABLE dlq_jobs (
    id                bigserial   PRIMARY KEY,
    action            text        NOT NULL DEFAULT 'replay' CHECK (action IN ('replay')),
    actor             text        NOT NULL,
    filters           jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- Filters.public(), plus limit and all
    rate              real        CHECK (rate IS NULL OR rate > 0),  -- messages a second; NULL: unpaced
    status            text        NOT NULL DEFAULT 'queued'
                                  CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    selected          integer     NOT NULL DEFAULT 0,  -- what the job chose (known once it ran)
    done              integer     NOT NULL DEFAULT 0,  -- replayed + already
    failed            integer     NOT NULL DEFAULT 0,  -- not confirmed: still on the dead queue
    replayed          integer     NOT NULL DEFAULT 0,  -- published by this job
    already           integer     NOT NULL DEFAULT 0,  -- replayed before: acked only
    error             text,                             -- why it failed
    action_id         bigint      REFERENCES dlq_actions (id),
    cancel_requested  boolean     NOT NULL DEFAULT false,
    runs              integer     NOT NULL DEFAULT 0,  -- times a worker took it (more than 1: resumed)
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    heartbeat_at      timestamptz,                      -- the running worker says it is alive
    claimed_by        text                              -- host/pid/run of that worker
);
CREATE INDEX dlq_jobs_open ON dlq_jobs (id) WHERE status IN ('queued', 'running');

-- A resumed job counts what it published before from here.
CREATE INDEX dlq_replayed_action ON dlq_replayed (action_id);
