"""The request bodies of the native REST API as pydantic models: what a handler accepts, and (in
``openapi.py``) what the OpenAPI document says it accepts, from the same classes.

A handler reads its body with ``RequestModel.parse``: strict JSON types (``true`` is not a
number, ``"5"`` is not an integer), and any failure becomes one ``InvalidRequest`` (400, the
API's JSON error) whose message names the field: the model's own words for it
(``field_messages``) where it has them, else a message made from pydantic's error. Rules across
fields ("exactly one of names, search or query") raise ``InvalidRequest`` themselves.

The reply shapes are in ``replies.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic import field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from ..catalogue.query_text import parse_query_text
from ..catalogue.search_parse import parse_search
from ..errors import InvalidRequest
from ..paths import check_text
from ..transfer.upload import DEFAULT_BATCH
from .replies import FixityState

M = TypeVar("M", bound="RequestModel")
Q = TypeVar("Q", bound="QueryModel")

#: Largest job id a request may name: the database's signed 64-bit integer.
MAX_ID = 2**63 - 1
#: A search in the Librarian's JSON language: an object (or list), or the same as JSON text.
SearchJson = dict[str, Any] | list[Any] | str
StageMethod = Literal["copy", "hardlink", "symlink", "reflink", "contents"]
SearchKind = Literal["files", "instances", "observations", "sessions"]  # search_parse.KINDS

#: pydantic's error types -> the end of a message about the field.
_MEANINGS = {
    "missing": "is required",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a JSON object",
    "string_too_short": "must not be empty",
    "too_short": "must not be empty",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be one of {expected}",
}


def _field(loc: tuple[int | str, ...]) -> str:
    """``('names', 2)`` -> ``names[2]``: the place of an error in the body."""
    text = str(loc[0]) if loc else "body"
    for part in loc[1:]:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            break  # a union member's name ('str', 'list[any]'), not a place
    return text


class RequestModel(BaseModel):
    """A request body: strict JSON types; unknown fields ignored unless a model forbids them."""

    model_config = ConfigDict(strict=True)

    #: field -> the message for any error in that field (``{input}``: the value given, and
    #: the validation context's keys, such as ``{max_search_limit}``).
    field_messages: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def parse(cls: type[M], body: Mapping[str, Any], **context: Any) -> M:
        """``body`` validated, or ``InvalidRequest`` naming the first field that is wrong."""
        try:
            return cls.model_validate(body, context=context)
        except ValidationError as exc:
            raise InvalidRequest(cls._message(exc, context)) from None

    #: What an unknown key is called in a message.
    unknown_what: ClassVar[str] = "field(s)"

    @classmethod
    def _message(cls, exc: ValidationError, context: Mapping[str, Any]) -> str:
        errors = exc.errors(include_url=False)
        unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
        if unknown:
            return f"unknown {cls.unknown_what}: {', '.join(sorted(unknown))}"
        error = errors[0]
        field = _field(error["loc"])
        own = cls.field_messages.get(str(error["loc"][0]) if error["loc"] else "")
        if own is not None:
            return own.format(input=repr(error.get("input")), **context)
        meaning = _MEANINGS.get(error["type"])
        if meaning is None:
            return f"'{field}': {error['msg']}"
        return f"'{field}' " + meaning.format(**(error.get("ctx") or {}))


def _exactly_one(body: Any, keys: tuple[str, ...], message: str) -> None:
    """``InvalidRequest(message)`` unless exactly one of ``keys`` is given (not null)."""
    if isinstance(body, Mapping) and sum(body.get(k) is not None for k in keys) != 1:
        raise InvalidRequest(message)


class Selection(RequestModel):
    """The files a request names: exactly one of names, search (JSON) or query (text)."""

    names: list[str] | None = Field(None, min_length=1)
    search: SearchJson | None = Field(None, description="The Librarian JSON search language, "
                                      "as an object or as JSON text.")
    query: str | None = Field(None, description="The one-line search syntax.")

    field_messages: ClassVar[Mapping[str, str]] = {
        "names": "'names' must be a non-empty list of file names",
        "search": "'search' must be a JSON search: an object, or JSON text",
        "query": "'query' must be a string",
    }

    @model_validator(mode="before")
    @classmethod
    def _one_selection(cls, body: Any) -> Any:
        _exactly_one(body, ("names", "search", "query"),
                     "give exactly one of 'names', 'search' (JSON) or 'query' (text)")
        return body

    def parsed_search(self) -> Any:
        """The search to resolve (the query translated), or None when names are given."""
        if self.query is not None:
            return parse_query_text(self.query)
        return None if self.search is None else parse_search(self.search)


class SearchRequest(RequestModel):
    """Exactly one of 'search' (the Librarian JSON language, as an object or as JSON text) or
    'query' (the one-line syntax)."""

    search: SearchJson | None = None
    query: str | None = None
    kind: SearchKind = "files"
    limit: int = Field(100, ge=1, description="Results per page, at most the server's "
                       "c.StagingApp.max_search_limit.")
    cursor: str | None = Field(None, description="A previous reply's next_cursor.")
    count: bool = False
    sort: str | None = Field(None, description="A column such as 'name', 'obsid', 'size', "
                             "'create_time'; a leading '-' sorts descending.")

    field_messages: ClassVar[Mapping[str, str]] = {
        "kind": f"kind must be one of {', '.join(get_args(SearchKind))}; got {{input}}",
        "search": "'search' must be a JSON search: an object, or JSON text",
        "query": "'query' must be a string",
        "limit": "'limit' must be an integer from 1 to {max_search_limit}",
        "cursor": "'cursor' must be a string from a previous reply's next_cursor",
        "count": "'count' must be true or false",
        "sort": "'sort' must be a string such as 'name' or '-size'",
    }

    @model_validator(mode="before")
    @classmethod
    def _one_search(cls, body: Any) -> Any:
        _exactly_one(body, ("search", "query"),
                     "give exactly one of 'search' (JSON) or 'query' (one-line text)")
        return body

    @field_validator("limit")
    @classmethod
    def _at_most_the_configured(cls, limit: int, info: ValidationInfo) -> int:
        most = (info.context or {}).get("max_search_limit")
        if most is not None and limit > most:
            raise InvalidRequest(f"'limit' must be an integer from 1 to {most}")
        return limit

    def parsed_search(self) -> Any:
        if self.query is not None:
            return parse_query_text(self.query, self.kind)
        assert self.search is not None  # exactly one of the two (_one_search)
        return parse_search(self.search)


class StageRequest(Selection):
    """Exactly one of 'names', 'search' (JSON) or 'query' (one-line text); the search is
    resolved to file names at launch, and the job stages exactly those."""

    destination: str = Field(min_length=1, description="A folder, relative to the server's "
                             "root directory (method contents: a contents path, relative to "
                             "the contents manager's root).")
    method: StageMethod = Field(
        "copy", description="contents: through the server's contents manager, in chunks (for "
        "contents not on a local file system).")
    dry_run: bool = False
    force: bool = Field(False, description="Launch even when free space looks too small.")
    with_items: bool = Field(False, description="Dry run at the site service (set by the "
                             "user's server): also list the items, for the user's server to "
                             "look at the destination.")
    expires_in: float | str | None = Field(
        None, description="When the staged folder expires (`POST staged/clean` with expired: "
        "true may then remove it): seconds, or text such as '7d', '12h', '90m', '2w'. "
        "Default: the site's staged_expiry_days.")
    expires_at: str | None = Field(None, description="The same as an ISO 8601 time (UTC "
                                   "unless it says).", json_schema_extra={"format": "date-time"})
    #: A user's server's description of its contents manager (site mode only, set by it).
    contents: SkipJsonSchema[dict[str, Any] | None] = None

    field_messages: ClassVar[Mapping[str, str]] = {
        **Selection.field_messages,
        "destination": "'destination' must be a folder (relative to your root directory)",
        "method": f"unknown staging method {{input}}: one of {', '.join(get_args(StageMethod))}",
        "expires_in": "'expires_in' must be seconds, or text such as '7d' or '12h'",
        "expires_at": "'expires_at' must be an ISO 8601 time",
        "contents": "'contents' must be a JSON object",
    }


class TransferRequest(Selection):
    """Exactly one of 'names', 'search' (JSON) or 'query' (one-line text), resolved to file
    names at launch; the job sends exactly those to the peer."""

    peer: str = Field(min_length=1, description="A configured peer (GET peers).")

    field_messages: ClassVar[Mapping[str, str]] = {
        **Selection.field_messages,
        "peer": "'peer' must name a configured peer (GET peers lists them)",
    }


class RetryRequest(RequestModel):
    force: bool = Field(False, description="Retry even if the free space looks too small.")


class IngestRequest(RequestModel):
    """'store' and 'globs' ingest everything the patterns match ('plan': only list what is
    new); 'store' and 'paths' ingest exactly those store-relative paths (the CLI's batches)."""

    store: str = Field(min_length=1)
    globs: list[str] = Field(["*"], description="Patterns relative to the store's root.")
    plan: bool = Field(False, description="Only list the new paths.")
    paths: list[str] | None = Field(None, description="Ingest exactly these store-relative "
                                    "paths.")

    field_messages: ClassVar[Mapping[str, str]] = {
        "store": "'store' must name a configured store",
        "globs": "'globs' must be a list of patterns",
        "paths": "'paths' must be a list of store-relative paths",
    }


class UploadRequest(RequestModel):
    """Exactly one of 'store' or 'peer'."""

    model_config = ConfigDict(extra="forbid")

    directory: str = Field(min_length=1, description="A folder inside the allowed roots "
                           "(relative: to the server's root directory).")
    glob: str = Field(min_length=1, description="Pattern relative to the directory, e.g. "
                      "'**/*.uvh5'.")
    store: str | None = Field(None, min_length=1, description="Upload into this store.")
    peer: str | None = Field(None, min_length=1, description="Upload to this peer, through "
                             "the local c.StagingApp.upload_store.")
    batch: int = Field(DEFAULT_BATCH, ge=1, description="Files a stream claims at a time.")
    parallel: int | None = Field(None, ge=1, description="Streams (default: the worker's).")
    manifest: str | None = Field(None, description="Where the manifest JSON is written "
                                 "(inside the allowed roots; default: upload-manifest.json in "
                                 "the directory).")

    field_messages: ClassVar[Mapping[str, str]] = {
        "directory": "'directory' must be a non-empty string",
        "glob": "'glob' must be a non-empty string",
        "store": "'store' must be a name",
        "peer": "'peer' must be a name",
        "manifest": "'manifest' must be a path",
    }

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, body: Any) -> Any:
        _exactly_one(body, ("store", "peer"), "give exactly one of 'store' or 'peer'")
        return body


class StandingOrderRequest(RequestModel):
    """Exactly one of 'search' (JSON) or 'query' (one-line text), validated now; the order
    sends what it matches, as files arrive, until deleted."""

    # Checked by ``transfer.orders.order_request``, which audits refusals too.
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    peer: str = Field(min_length=1, description="A configured peer (GET peers).")
    search: SearchJson | None = None
    query: str | None = None


class StoreChoice(RequestModel):
    store: str | None = Field(None, min_length=1, description="Only the copy on this store.")

    field_messages: ClassVar[Mapping[str, str]] = {
        "store": "'store' must be a non-empty string"}


class DeletionPolicyRequest(StoreChoice):
    policy: Literal["allowed", "disallowed"]
    all: bool = Field(False, description="Every copy of the file.")

    field_messages: ClassVar[Mapping[str, str]] = {
        **StoreChoice.field_messages,
        "policy": "'policy' must be 'allowed' or 'disallowed'",
    }


class DeleteInstancesRequest(Selection):
    store: str | None = Field(None, min_length=1, description="Only copies on this store.")
    dry_run: bool = False

    field_messages: ClassVar[Mapping[str, str]] = {
        **Selection.field_messages, **StoreChoice.field_messages}


class OffloadRequest(RequestModel):
    source: str = Field(min_length=1)
    dest: str = Field(min_length=1)
    wait: bool = Field(False, description="Do it now and reply with what happened.")

    field_messages: ClassVar[Mapping[str, str]] = {
        "source": "an offload needs 'source' and 'dest' store names",
        "dest": "an offload needs 'source' and 'dest' store names",
    }


#: A folder a request names: a path some file system may hold (``paths.check_text``).
FolderPath = Annotated[str, Field(min_length=1),
                       AfterValidator(lambda path: check_text(path, "a 'folders' entry"))]


class StagedCleanRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    expired: bool = Field(False, description="Every expired folder of yours.")
    folders: list[FolderPath] = Field(
        [], description="These staged folders (absolute, or relative to your root directory).")
    dry_run: bool = False

    field_messages: ClassVar[Mapping[str, str]] = {
        "folders": "'folders' must be a list of folder paths"}


class StagedCleanedRequest(RequestModel):
    jobs: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(
        description="Ids of finished jobs of yours.")

    field_messages: ClassVar[Mapping[str, str]] = {"jobs": "'jobs' must be a list of job ids"}


class QueryModel(RequestModel):
    """The query string of a request: strings read as the fields' types (``limit=5`` is a
    number); an unknown parameter is refused (a misspelt filter must not answer the unfiltered
    default), but for two that are never the API's: Jupyter's ``token`` (authentication, read
    by Jupyter before a handler runs) and JupyterLab's cache buster (``ServerConnection``
    appends ``&<milliseconds>``, with no value, to a request it must not cache: the panel's
    log). A field typed as a list takes every value of its repeated parameter."""

    model_config = ConfigDict(strict=False, extra="forbid")
    unknown_what: ClassVar[str] = "query parameter(s)"

    @classmethod
    def from_arguments(cls: type[Q], arguments: Mapping[str, list[bytes]],
                       **context: Any) -> Q:
        """The model of tornado's ``request.query_arguments``, or ``InvalidRequest``."""
        values: dict[str, Any] = {}
        for key, given in arguments.items():
            if key == "token" or (key.isascii() and key.isdigit() and given == [b""]):
                continue
            texts = [v.decode("utf-8", "replace") for v in given]
            field = cls.model_fields.get(key)
            is_list = field is not None and get_origin(field.annotation) is list
            values[key] = texts if is_list else texts[-1]
        return cls.parse(values, **context)


class FixityQuery(QueryModel):
    state: list[FixityState] = Field([], description="Default: bad and missing.")
    store: str = Field("", description="Only copies on this store.")
    limit: int = Field(1000, ge=1, description="At most the server's "
                       "c.StagingApp.max_search_limit.")

    field_messages: ClassVar[Mapping[str, str]] = {
        "state": f"unknown fixity state {{input}}: one of {', '.join(get_args(FixityState))}",
        "limit": "'limit' must be an integer between 1 and {max_search_limit}",
    }

    @field_validator("limit")
    @classmethod
    def _at_most_the_configured(cls, limit: int, info: ValidationInfo) -> int:
        most = (info.context or {}).get("max_search_limit")
        if most is not None and limit > most:
            raise InvalidRequest(f"'limit' must be an integer between 1 and {most}")
        return limit


class JobLogQuery(QueryModel):
    offset: int = Field(0, ge=0, le=MAX_ID, description="A byte offset: a previous reply's "
                        "next_offset.")

    field_messages: ClassVar[Mapping[str, str]] = {
        "offset": "'offset' must be a non-negative integer"}


#: Every request body, for the OpenAPI document.
REQUEST_MODELS: tuple[type[RequestModel], ...] = (
    SearchRequest, StageRequest, TransferRequest, RetryRequest, IngestRequest, UploadRequest,
    StandingOrderRequest, StoreChoice, DeletionPolicyRequest, DeleteInstancesRequest,
    OffloadRequest, StagedCleanRequest, StagedCleanedRequest,
)
#: Every query string model (their fields are the operations' query parameters).
QUERY_MODELS: tuple[type[QueryModel], ...] = (FixityQuery, JobLogQuery)
