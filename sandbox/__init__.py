"""A local emulator of the Plaid API and of Atomic, for tests, benchmarks and the demo.

The real plaid-python SDK talks to it: ``plaid.Configuration(host=base_url, api_key={"clientId": ...,
"secret": ..., "plaidVersion": "2020-09-14"})``. Start it with :func:`sandbox.app.serve` (in process)
or :func:`sandbox.app.run_forever` (``paw sandbox``); drive it with ``app[SANDBOX]``
(:class:`sandbox.state.SandboxState`) or over HTTP under ``/sandbox/control/``.

Sandbox conventions
-------------------
``/sandbox/public_token/create`` ``options.override_username`` picks the Item's accounts
(``override_password`` is ignored):

- ``user_good`` (also the default): ``checking`` "Plaid Checking" (mask 0000), ``savings``
  "Plaid Saving" (1111), and a ``credit card`` (3333).
- ``user_savings_only``: one ``savings`` account.
- ``user_no_depository``: only a credit card, a student loan and a mortgage (no ACH numbers; a
  processor token for them is refused with ITEM_ERROR/NO_AUTH_ACCOUNTS).
- ``user_automated_microdeposits``: one ``checking`` with ``verification_status``
  ``pending_automatic_verification``; processor tokens are refused (PRODUCT_NOT_READY) until
  ``/sandbox/item/set_verification_status`` (or fire_webhook AUTOMATICALLY_VERIFIED) verifies it.
- any other username: 400 ITEM_ERROR/INVALID_CREDENTIALS.

Account numbers are unique per account and end in the mask; routing is ``011401533``, wire routing
``021000021``.

``/sandbox/item/fire_webhook`` infers ``webhook_type`` from the code when omitted, accepts an extra
``account_id`` (sandbox extension) for account-level codes, and needs the Item to have a webhook URL.
Firing ITEM ``ERROR`` puts the Item into ITEM_LOGIN_REQUIRED and ``LOGIN_REPAIRED`` takes it out;
AUTH ``AUTOMATICALLY_VERIFIED``/``VERIFICATION_EXPIRED`` update a micro-deposit account's status;
AUTH ``DEFAULT_UPDATE`` gives the account a new account number. Other codes only notify.

Webhook delivery: a Plaid webhook not answered 2xx within ``webhook_timeout_s`` (10 s; any other
status, a timeout, a refused connection) is sent again as Plaid does: first after 30 s, each delay
4 times the last, while the next attempt still falls within 24 hours of the first; a 429 with
``Retry-After`` waits that long instead (at most 4 hours). Every attempt carries the same bytes and a
new ``Plaid-Verification`` JWT (``iat`` = that attempt, the current kid): Plaid's docs don't say how
a retry is signed, and a receiver rejects an ``iat`` over 5 minutes old, so without it no retry from
the third on could verify. ``webhook_retry_time_scale`` multiplies every wait (and the 24 hours) for
tests. Plaid's "no retries to an endpoint rejecting over 90 %" is not emulated. Atomic's webhooks are
sent once, never retried. Each webhook gets an id and a record of its attempts and outcome
(``SandboxState.webhooks``, ``stats()["webhooks"]``, ``GET /sandbox/control/webhooks``);
``drain()`` waits for scheduled retries too, ``close()`` cancels them.

Atomic (``/atomic``): a funding source whose ``customer_ref`` starts with ``reject`` is REJECTED
with reason ``customer_rejected``; one whose processor token fails ``/processor/auth/get`` is
REJECTED with ``account_verification_failed``; anything else is VERIFIED, after
``atomic_decision_delay_s``. ``POST /atomic/sandbox/funding_sources/{id}/decide`` forces a decision.
"""
