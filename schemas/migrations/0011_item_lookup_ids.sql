-- Finding an Item by the id support has (`paw item show <id>`): Atomic's funding source id, the
-- upstream app's request_id of the submission, the Plaid request_id of the Item's last Plaid call.
-- (client_user_id and plaid_item_id are indexed already; an id prefix is a range of the primary key.)
CREATE INDEX items_funding_source ON items (atomic_funding_source_id) WHERE atomic_funding_source_id IS NOT NULL;
CREATE INDEX items_submission_request ON items (submission_request_id) WHERE submission_request_id IS NOT NULL;
CREATE INDEX items_plaid_request ON items (plaid_request_id) WHERE plaid_request_id IS NOT NULL;
