"""A local emulator of the Plaid API and of Atomic, for tests, benchmarks and the demo.

The real plaid-python SDK talks to it: ``plaid.Configuration(host=base_url, api_key={"clientId": ...,
"secret": ..., "plaidVersion": "2020-09-14"})``. Start it with :func:`sandbox.app.serve` (in process)
or :func:`sandbox.app.run_forever` (``paw sandbox``); drive it with ``app[SANDBOX]``
(:class:`sandbox.state.SandboxState`) or over HTTP under ``/sandbox/control/``.

Test credentials (``/sandbox/public_token/create``)
--------------------------------------------------
As Plaid's Sandbox documents them (plaid.com/docs/sandbox/test-credentials/, /sandbox/institutions/,
/sandbox/user-custom/, /auth/coverage/testing/); :mod:`sandbox.credentials` holds the evidence.
``institution_id`` must be one of Plaid's Sandbox-only institutions (First Platypus Bank
``ins_109508``, First Platypus Balance Bank ``ins_130016``, First Gingham Credit Union ``ins_109509``,
Tattersall Federal Credit Union ``ins_109510``, Tartan Bank ``ins_109511``, Houndstooth Bank
``ins_109512``, Tartan-Dominion Bank of Canada ``ins_43``, the UK/OAuth/App2App/QR test banks, Windowpane
Bank ``ins_135858``, the Unhealthy/Unsupported/RUX Platypus banks); any other id is 400
INVALID_INPUT/INVALID_INSTITUTION (Production institutions, which the real Sandbox also has, included).
``options.override_username`` defaults to ``user_good``, ``options.override_password`` to ``pass_good``:

- ``user_good`` / ``pass_good``: twelve accounts: Plaid Checking 0000, Plaid Saving 1111, Plaid CD 2222,
  Plaid Credit Card 3333, Plaid Money Market 4444, Plaid IRA 5555, Plaid 401k 6666, Plaid Student Loan
  7777, Plaid Mortgage 8888, Plaid HSA 9001, Plaid Cash Management 9002, Plaid Business Credit Card
  9999, with Plaid's official names, types and balances. Only checking, savings and cash management
  have ACH numbers (Auth); a processor token for another account is ITEM_ERROR/NO_AUTH_ACCOUNTS.
  ``auth_method`` INSTANT_AUTH. The MFA passwords (``mfa_device``, ``mfa_questions_<n>_<m>``,
  ``mfa_selections[_<n>_<m>_<o>]``) log in the same (no MFA step without Link).
- ``user_good`` / ``microdeposits_good`` at Houndstooth Bank ``ins_109512``: Automated Micro-deposits:
  one Plaid Checking 0000 with ``verification_status`` ``pending_automatic_verification``
  (``auth_method`` AUTOMATED_MICRODEPOSITS); processor tokens for it are refused
  (ITEM_ERROR/PRODUCT_NOT_READY) until ``/sandbox/item/set_verification_status`` verifies it. At
  any other institution (they offer Instant Auth) the same password is an ordinary ``pass_good``
  login: the docs state no other outcome.
- ``user_good`` / ``error_<CODE>``: the create call fails with that error, its real error_type and
  HTTP status: the ITEM_ERRORs INSUFFICIENT_CREDENTIALS, INVALID_CREDENTIALS, INVALID_MFA,
  INVALID_SEND_METHOD, ITEM_LOCKED, ITEM_LOGIN_REQUIRED, ITEM_NOT_SUPPORTED, MFA_NOT_SUPPORTED,
  NO_ACCOUNTS, USER_INPUT_TIMEOUT, USER_SETUP_REQUIRED (400); the INSTITUTION_ERRORs INSTITUTION_DOWN,
  INSTITUTION_NOT_RESPONDING, INSTITUTION_NOT_AVAILABLE, INSTITUTION_NO_LONGER_SUPPORTED (400); and
  API_ERROR/INTERNAL_SERVER_ERROR (500). To break an existing Item use ``/sandbox/item/reset_login``.
- ``user_good`` with any other password: 400 ITEM_ERROR/INVALID_CREDENTIALS.
- ``user_custom`` / a JSON configuration object (Plaid's ``UserCustomPassword``): ``override_accounts``
  (at most 10) each give an account: ``type``, ``subtype`` (required, from Plaid's enums),
  ``starting_balance`` (current balance; random if absent), ``force_available_balance`` or
  ``has_null_available_balance`` (else a depository account's available equals its current, others
  have none), ``currency``, ``meta`` (``name``, ``official_name``, ``limit``, ``mask``) and
  ``numbers`` (``account``, ``ach_routing``, ``ach_wire_routing``: valid ABA numbers). ``{}`` gives one
  random checking account. ``force_error`` (one of Plaid's list; PLAID_ERROR is
  API_ERROR/INTERNAL_SERVER_ERROR) fails the create call with that error. A password that is not
  JSON, or a configuration of the wrong shape, is ITEM_ERROR/INVALID_CREDENTIALS, as Plaid answers
  (the reason is logged). Transactions, identity, liabilities, MFA etc. are accepted and ignored.
- any other username: 400 ITEM_ERROR/INVALID_CREDENTIALS (Plaid's other test users, e.g.
  ``user_transactions_dynamic``, are not modelled).

Aliases (emulator-only names, kept from before the emulator knew Plaid's test users; the password
is ignored):

- ``user_savings_only`` = ``user_custom`` with one savings account (Plaid Saving 1111, 200/210).
- ``user_no_depository`` = ``user_custom`` with Plaid's credit card 3333, student loan 7777 and mortgage
  8888 (no ACH numbers; ``auth_method`` null).
- ``user_automated_microdeposits`` = ``user_good`` / ``microdeposits_good`` at Houndstooth Bank: the Item
  is at ``ins_109512`` whatever ``institution_id`` said.

Beyond the real Sandbox: ``POST /sandbox/control/public_token/create_same_day`` {``initial_products``?
(only ``["auth"]``), ``webhook``?} → {``public_token``}: the Item Link would leave after Same-Day
Micro-deposits (which Plaid's Sandbox makes only through Link): no institution (``institution_id``
null), ``auth_method`` SAME_DAY_MICRODEPOSITS, one checking account 0000 with ``verification_status``
``pending_manual_verification``, no balances, routing ``110000000``; processor tokens are refused
(PRODUCT_NOT_READY) while it is pending.

Beyond the real Sandbox: ``POST /sandbox/control/public_token/create_database_insights``
{``verification_status`` (``database_insights_pass``, ``_pass_with_caution``, ``_fail``, ``_pending``),
``webhook``?} → {``public_token``}: the Item Link would leave after Database Insights (``auth_method``
DATABASE_INSIGHTS, one checking account 0000, no institution, no balances). ``POST
/sandbox/control/item/set_verification_status`` gives an account any documented status, silently.

Account numbers are unique per account and end in the mask (unless ``user_custom`` sets them); routing
is ``011401533``, wire routing ``021000021`` unless set.

``/sandbox/item/fire_webhook`` fires what Plaid's does (the codes its request enum shows):
``DEFAULT_UPDATE`` for the product ``webhook_type`` names (TRANSACTIONS when none; AUTH gives the first
Auth account a new account number), ITEM ``NEW_ACCOUNTS_AVAILABLE``, ``USER_PERMISSION_REVOKED``,
``USER_ACCOUNT_REVOKED`` (the first Auth account), ``PENDING_DISCONNECT``, ``LOGIN_REPAIRED`` (the
login works again), AUTH ``SMS_MICRODEPOSITS_VERIFICATION`` (a Same-Day Item's account becomes
``manually_verified``), TRANSACTIONS ``SYNC_UPDATES_AVAILABLE`` and ``RECURRING_TRANSACTIONS_UPDATE``,
and the ASSETS webhooks ``PRODUCT_READY`` and ``ERROR``. An Item without the product: SANDBOX_ERROR /
SANDBOX_PRODUCT_NOT_ENABLED; without a webhook: SANDBOX_WEBHOOK_INVALID; any other code or a type
that does not go with it: INVALID_REQUEST / INVALID_FIELD; an ``account_id``: UNKNOWN_FIELDS. The
rest (ITEM PENDING_EXPIRATION, an ITEM ERROR breaking the login, a chosen account, a repair with or
without a webhook, the Atomic integration turned off) is under ``/sandbox/control/``
(:mod:`sandbox.control_routes`).

``/link/token/create`` stores the request (user, products, webhook, redirect_uri, access_token) under
``link-sandbox-<uuid>``, valid 4 hours (30 minutes in update mode, i.e. with ``access_token``). Nothing
here plays Link itself, so POST ``/sandbox/control/link/complete`` {link_token, username?,
institution_id?} stands in for the user (beyond the real Sandbox): a new-Item token gives a public
token for an Item with the token's products and webhook; an update-mode token repairs the Item's
login, answers ``public_token: null`` and sends no webhook. ``/item/get`` shows the Item, with
``error`` set while its login is broken.

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
