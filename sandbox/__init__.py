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

``/link/token/create`` stores the request (user, products, webhook, redirect_uri, access_token) under
``link-sandbox-<uuid>``, valid 4 hours (30 minutes in update mode, i.e. with ``access_token``). Nothing
here plays Link itself, so POST ``/sandbox/control/link/complete`` {link_token, username?,
institution_id?} stands in for the user (beyond the real Sandbox): a new-Item token gives a public
token for an Item with the token's products and webhook; an update-mode token repairs the Item's
login, answers ``public_token: null`` and sends no webhook. ``/item/get`` shows the Item, with
``error`` set while its login is broken.

Atomic (``/atomic``): a funding source whose ``customer_ref`` starts with ``reject`` is REJECTED
with reason ``customer_rejected``; one whose processor token fails ``/processor/auth/get`` is
REJECTED with ``account_verification_failed``; anything else is VERIFIED, after
``atomic_decision_delay_s``. ``POST /atomic/sandbox/funding_sources/{id}/decide`` forces a decision.
"""
