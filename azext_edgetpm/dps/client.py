"""The DPS service API (2021-10-01) on azure-core's pipeline.

The pipeline: headers and user agent, azure-core's RetryPolicy (429 with Retry-After and 408/5xx
with exponential back-off, POST included for 5xx as azure-core decides), a SAS or bearer token
policy, and azure-core's HttpLoggingPolicy, which logs only allow-listed headers and query
parameters (the Authorization header is shown as REDACTED) and never bodies. TLS is verified
against the system's or REQUESTS_CA_BUNDLE's CA bundle; there is no way to turn that off.

DPS errors (`{"errorCode", "message", "trackingId"}`) become domain errors (errors.py) that
carry the code, the message and the tracking ID.
"""
import logging
from typing import Iterator, List, Optional

from knack.log import get_logger

from azext_edgetpm import errors
from azext_edgetpm.dps.discovery import DpsTarget
from azext_edgetpm.errors import option

logger = get_logger(__name__)

API_VERSION = "2021-10-01"
BULK_MAX = 10
ENDORSEMENT_KEY_INVALID = 400004

_HOW_TO_READ_EK = ("DPS takes the base64 of the marshalled TPM2B_PUBLIC (it starts 'AToAAQALAAMAsgAg' for a "
                   "typical RSA-2048 EK): read it with `az edge-tpm ek show --host <device>`, or on the device "
                   "with `tpm2_readpublic -c 0x81010001 -o ek.pub; base64 -w0 ek.pub`. A PEM, a raw modulus or a "
                   "TPMT_PUBLIC without its 2-byte size prefix is refused.")


class DpsConflictError(errors.ConflictError):
    """409 (exists / changed) and 412 (etag mismatch) answers (`.dps`: what DPS said, when the error is its answer)."""
    dps: dict  # (set by error_from_response)


class DpsThrottledError(errors.ThrottledError):
    """429 answers that outlasted the retry policy (`.dps`: what DPS said)."""
    dps: dict  # (set by error_from_response)


class _DebugLogger(logging.LoggerAdapter):
    """HttpLoggingPolicy logs at INFO; our HTTP traces belong to --debug, not --verbose."""

    def isEnabledFor(self, level):
        return self.logger.isEnabledFor(logging.DEBUG if level == logging.INFO else level)

    def info(self, msg, *args, **kwargs):
        self.logger.debug(msg, *args, **kwargs)


def _dps_details(response) -> dict:
    try:
        body = response.json()
    except Exception:  # pylint: disable=broad-except  # not JSON: proxies, load balancers
        body = None
    if not isinstance(body, dict):
        body = {"message": (response.text() or "")[:300] or response.reason}
    return {"status": response.status_code, "errorCode": body.get("errorCode"),
            "message": body.get("message") or body.get("Message") or response.reason,
            "trackingId": body.get("trackingId") or response.headers.get("x-ms-request-id"),
            "retryAfter": _retry_after(response.headers.get("Retry-After"))}


def _retry_after(value) -> Optional[float]:
    """Retry-After in seconds (DPS sends delta-seconds), None when absent or not a number."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 <= seconds <= 3600 else None


def error_from_response(response, operation: str, target: Optional[DpsTarget] = None,
                        credential_accepted: bool = False) -> Exception:
    """One domain error for a failed DPS answer; the error keeps `.dps` (status, errorCode,
    message, trackingId) for callers that act on it. `credential_accepted`: DPS already accepted
    this credential for another operation, so a 401 means a missing right, not a wrong key."""
    d = _dps_details(response)
    status, code = d["status"], d["errorCode"]
    detail = f"{d['message']} (HTTP {status}"
    if code:
        detail += f", errorCode {code}"
    if d["trackingId"]:
        detail += f", trackingId {d['trackingId']}"
    detail += ")"
    text = f"DPS refused to {operation}: {detail}"
    how = "DPS"
    if target is not None:
        how = ("the shared access policy " + repr(target.policy) if target.auth_type == "key"
               else "your az login identity")
    if code == ENDORSEMENT_KEY_INVALID:
        err = errors.UserInputError(f"Endorsement key is invalid: {detail}", _HOW_TO_READ_EK)
    elif status == 400:
        err = errors.BadRequestError(text, "Check the values given; `az edge-tpm enrollment create -h` lists them.")
    elif status == 401 and credential_accepted:
        # DPS answers 401 (not 403) when a valid credential lacks the right for the operation.
        err = errors.AuthError(text, f"DPS accepted {how} for other operations but not to {operation}: it lacks "
                                     "the right. Use a shared access policy with EnrollmentWrite for enrollment "
                                     "changes (EnrollmentRead to read, RegistrationStatusRead for registration "
                                     f"states), or with {option('auth_type')} login the 'Device Provisioning Service "
                                     "Data Contributor' role.")
    elif status == 401:
        err = errors.AuthError(text, f"DPS did not accept {how}: with {option('login')}, the key may be wrong or "
                                     "regenerated (copy the connection string again) or the policy may lack the right "
                                     f"for this operation; with {option('auth_type')} login, run `az login` again or "
                                     "check the identity's role on the DPS.")
    elif status == 403:
        err = errors.PermissionDeniedError(text, f"{how} lacks the right for this. Use a policy with EnrollmentWrite "
                                                 f"(or, with {option('auth_type')} login, the 'Device Provisioning "
                                                 "Service Data Contributor' role).")
    elif status == 404:
        err = errors.NotFoundError(text, "Check the ID (`az edge-tpm enrollment list` shows the enrollments).")
    elif status in (409, 412):
        err = DpsConflictError(text, "It changed meanwhile; run the command again.")
    elif status == 429:
        err = DpsThrottledError(text, "DPS limits service operations per minute (1,000 by default) and kept "
                                      "throttling after the retries; wait a minute and run the command again.")
    elif status >= 500:
        err = errors.ServerError(text, "DPS had a server error and kept having it after the retries; "
                                       "try again later.")
    else:
        err = errors.ServiceError(text, "Try again; if it persists, report the trackingId.")
    err.dps = d
    return err


def pipeline_client(endpoint: str, auth, cli_ctx=None,  # pylint: disable=too-many-locals
                    retry_total: int = 10, retry_backoff_factor: float = 0.8,
                    retry_connect: Optional[int] = None, connection_timeout: float = 20, read_timeout: float = 60,
                    transport=None, budget=None, pool_size=None):
    """An azure-core PipelineClient for one Azure IoT data-plane endpoint (DPS, an IoT hub):
    headers and user agent, retries, the `auth` policy, an optional rate budget, redacting HTTP
    logging at --debug."""
    from azure.core import PipelineClient
    from azure.core.pipeline.policies import (
        HeadersPolicy, HttpLoggingPolicy, RequestIdPolicy, RetryPolicy, UserAgentPolicy)
    from azure.core.pipeline.transport import RequestsTransport
    http_logging = HttpLoggingPolicy(logger=_DebugLogger(get_logger("azext_edgetpm.dps.http"), {}))
    http_logging.allowed_header_names |= {"x-ms-continuation", "x-ms-max-item-count", "If-Match", "ETag"}
    http_logging.allowed_query_params |= {"api-version"}
    user_agent = "azext-edgetpm"
    if cli_ctx is not None:
        from azure.cli.core.util import get_az_user_agent
        user_agent = get_az_user_agent() + " " + user_agent
    retry = {} if retry_connect is None else {"retry_connect": retry_connect}
    policies = [
        HeadersPolicy({"Accept": "application/json"}),
        UserAgentPolicy(base_user_agent=user_agent),
        RequestIdPolicy(),
        RetryPolicy(retry_total=retry_total, retry_status=retry_total,
                    retry_backoff_factor=retry_backoff_factor, retry_backoff_max=60, **retry),
        auth,
        http_logging,
    ]
    if budget is not None:
        # After the retry policy: every attempt takes a token of the run's shared DPS budget.
        from azext_edgetpm.dps.ratelimit import RateLimitPolicy
        policies.insert(4, RateLimitPolicy(budget))
    if transport is None and pool_size:
        import requests
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=int(pool_size))
        session.mount("https://", adapter)
        transport = RequestsTransport(session=session, session_owner=True,
                                      connection_timeout=connection_timeout, read_timeout=read_timeout)
    return PipelineClient(endpoint, policies=policies,
                          transport=transport or RequestsTransport(connection_timeout=connection_timeout,
                                                                   read_timeout=read_timeout))


class DpsClient:
    """Service API calls for one DPS target."""

    def __init__(self, target: DpsTarget, cli_ctx=None,  # pylint: disable=too-many-locals
                 retry_total: int = 10, retry_backoff_factor: float = 0.8,
                 connection_timeout: float = 20, read_timeout: float = 60, transport=None, budget=None,
                 pool_size=None):
        from azure.core.pipeline.policies import BearerTokenCredentialPolicy
        from azext_edgetpm.dps.auth import DPS_SCOPE, SasAuthenticationPolicy
        self.target = target
        self.endpoint = f"https://{target.host}"
        self.credential_accepted = False  # set once DPS answers anything but 401/403
        if target.auth_type == "key":
            auth = SasAuthenticationPolicy(target.credential, target.host)
        else:
            auth = BearerTokenCredentialPolicy(target.credential, DPS_SCOPE)
        self.budget = budget
        self._client = pipeline_client(
            self.endpoint, auth, cli_ctx=cli_ctx, retry_total=retry_total, retry_backoff_factor=retry_backoff_factor,
            connection_timeout=connection_timeout, read_timeout=read_timeout, transport=transport, budget=budget,
            pool_size=pool_size)

    def close(self):
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, operation: str, body=None, headers=None, ok=(200,), **options):
        """One call through the pipeline; `options` are azure-core's per-call settings
        (retry_total, connection_timeout, read_timeout)."""
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError
        from azure.core.rest import HttpRequest
        from requests.exceptions import RequestException  # a bearer token fetched by MSAL on first use
        request = HttpRequest(method, self.endpoint + path, params={"api-version": API_VERSION},
                              headers=dict(headers or {}), json=body)
        try:
            response = self._client.send_request(request, **options)
        except (ServiceRequestError, ServiceResponseError, RequestException) as exc:
            raise _connection_error(self.target, exc) from exc
        accepted_before = self.credential_accepted
        if response.status_code not in (401, 403):
            self.credential_accepted = True  # (a 404 or 409 too: DPS checked the credential first)
        if response.status_code not in ok:
            raise error_from_response(response, operation, self.target, accepted_before)
        return response

    @staticmethod
    def _json(response):
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:  # e.g. an HTML page from a proxy in between
            raise errors.ServiceError(
                f"The DPS answered HTTP {response.status_code} with something that is not JSON "
                f"({response.headers.get('Content-Type', 'no content type')}).",
                "Check for a proxy or gateway between here and the DPS (HTTPS_PROXY, NO_PROXY).") from exc

    # -- individual enrollments ------------------------------------------------------------

    def _get(self, path: str, operation: str, missing_ok: bool = False, **options):
        try:
            return self._json(self._request("GET", path, operation, **options))
        except errors.NotFoundError:
            if missing_ok:
                return None
            raise

    def get_enrollment(self, enrollment_id: str, missing_ok: bool = False) -> Optional[dict]:
        return self._get("/enrollments/" + _quote(enrollment_id), f"read the enrollment {enrollment_id!r}",
                         missing_ok)

    def find_enrollment(self, enrollment_id: str) -> Optional[dict]:
        """The enrollment, or None when DPS has none with this ID."""
        return self.get_enrollment(enrollment_id, missing_ok=True)

    def put_enrollment(self, enrollment: dict, etag: Optional[str] = None) -> dict:
        """Create (no etag) or update (If-Match: etag) an individual enrollment."""
        enrollment_id = enrollment["registrationId"]
        headers = {"If-Match": etag} if etag else {}
        verb = "update" if etag else "create"
        return self._json(self._request("PUT", "/enrollments/" + _quote(enrollment_id),
                                        f"{verb} the enrollment {enrollment_id!r}", body=enrollment,
                                        headers=headers, ok=(200, 201)))

    def delete_enrollment(self, enrollment_id: str, etag: Optional[str] = None) -> None:
        self._request("DELETE", "/enrollments/" + _quote(enrollment_id), f"delete the enrollment {enrollment_id!r}",
                      headers={"If-Match": etag or "*"}, ok=(200, 204))

    def query_enrollments(self, query: str = "*", page_size: Optional[int] = None) -> Iterator[dict]:
        """Every enrollment the query matches, page after page (x-ms-continuation)."""
        from azure.core.paging import ItemPaged

        def get_next(continuation=None):
            headers = {}
            if page_size:
                headers["x-ms-max-item-count"] = str(page_size)
            if continuation:
                headers["x-ms-continuation"] = continuation
            return self._request("POST", "/enrollments/query", "query the enrollments", body={"query": query},
                                 headers=headers)

        def extract_data(response):
            items = self._json(response) or []
            return response.headers.get("x-ms-continuation") or None, iter(items)

        return ItemPaged(get_next, extract_data)

    def bulk(self, mode: str, enrollments: List[dict]) -> dict:
        """Bulk operation (create | update | updateIfMatchETag | delete) in calls of at most ten;
        per-item errors gathered as DPS reports them."""
        refused, successful = [], True
        for start in range(0, len(enrollments), BULK_MAX):
            chunk = enrollments[start:start + BULK_MAX]
            result = self._json(self._request("POST", "/enrollments", f"run the bulk {mode} of {len(chunk)} "
                                              "enrollments", body={"mode": mode, "enrollments": chunk})) or {}
            successful = successful and bool(result.get("isSuccessful"))
            refused.extend(result.get("errors") or [])
        return {"isSuccessful": successful and not refused, "errors": refused}

    # -- registration state ---------------------------------------------------------------

    def get_registration(self, registration_id: str, missing_ok: bool = False, **options) -> Optional[dict]:
        return self._get("/registrations/" + _quote(registration_id),
                         f"read the registration state of {registration_id!r}", missing_ok, **options)

    def find_registration(self, registration_id: str, **options) -> Optional[dict]:
        """The registration state, or None while the device has not tried to register.
        `options`: azure-core per-call settings, e.g. retry_total=0 for a caller that retries itself."""
        return self.get_registration(registration_id, missing_ok=True, **options)

    def delete_registration(self, registration_id: str, etag: Optional[str] = None) -> None:
        """Delete a device's registration record (If-Match: its etag, else `*`). The enrollment
        stays; the device's IoT hub identity is not DPS's to delete."""
        self._request("DELETE", "/registrations/" + _quote(registration_id),
                      f"delete the registration state of {registration_id!r}",
                      headers={"If-Match": etag or "*"}, ok=(200, 204))


def _quote(value: str) -> str:
    """One URL path segment: everything but unreserved characters percent-encoded, and a segment
    of dots too (`.` and `..` would otherwise be resolved away by URL normalisation)."""
    import urllib.parse
    quoted = urllib.parse.quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted and not quoted.strip(".") else quoted


def _connection_error(target: DpsTarget, exc: Exception) -> Exception:
    """`.transient` says whether trying again later may help (an unreachable DPS) or not (TLS)."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text or "certificate" in text.lower():
        err = errors.TransientError(
            f"The TLS certificate of {target.host} could not be verified: {text}",
            "If the DPS is reached through a TLS-inspecting proxy or a private endpoint with its own CA, point "
            "REQUESTS_CA_BUNDLE at a bundle that holds that CA. Verification is never turned off.")
        err.transient = False
        return err
    err = errors.TransientError(f"Could not reach the DPS at {target.host}: {text}",
                                "Check the network path (proxy settings, DNS, firewall) to the DPS and retry.")
    err.transient = True
    return err
