"""LangGraph's ``/store`` API: JSON items under namespaces, per principal, with TTLs and semantic search.

Every item belongs to the principal that put it: the owner is part of its primary key, so
another principal's item is answered 404 like a missing one, and its namespaces are never
listed. Items live in the metadata database (``agent_store_items``), shared by every replica.

Semantic search: an item put with ``index`` (by default the configured ``index_fields``;
``false``: not indexed) has the text of those fields embedded through the gateway's
embeddings endpoint, as its caller (a caller token, as a run's LLM calls), and the unit
vector kept beside it (little-endian float32s: PostgreSQL ``bytea``, which reads 1000 vectors
of 384 dimensions about 8 times faster than ``float4[]``). A search with a ``query`` embeds
the query the same way and ranks the owner's indexed items under the prefix by cosine
similarity (``score``), computed in the replica (numpy) over at most ``max_items_per_owner``
candidates.

With encryption keys configured (``WELIP_ENCRYPTION_KEYS``) an item's value is stored as one
AES-256-GCM ciphertext bound to its owner, namespace and key. The database then sees only
the namespace, the key, the timestamps and the vector: ``filter`` is applied by the replica
after decrypting the candidates, and the vector (not encrypted) still says roughly what the
indexed text is about; put items with ``index: false`` to keep them out of it.

Where WeLIP differs from LangGraph's server: a missing (or another principal's, or expired)
item is 404 ``item_not_found``, not ``null``; one vector per item (the indexed fields' text
joined), not one per field; a ``query`` when no embeddings model is configured is 501.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from welip.agents._api import (
    MAX_OFFSET,
    MAX_PAGE,
    OwnerOf,
    _Body,
    _check_json,
    _invalid,
    _not_implemented,
    _parse,
    _query,
)
from welip.agents._caller import caller_token
from welip.agents._config import CallerJsonLimits, StoreConfig
from welip.api import OpenAIError
from welip.store import Database, Keyring, agent_store_items, as_utc, keyring_from_env, utcnow

if TYPE_CHECKING:
    from welip.rag import Embeddings

SEPARATOR = "."  # LangGraph's: labels never hold one
RESERVED_ROOT = "langgraph"  # LangGraph reserves this first label for itself
FILTER_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
MAX_QUERY_CHARS = 8000
MAX_INDEX_FIELDS = 16
MAX_INDEX_PATH_CHARS = 256
MAX_FILTER_KEYS = 32

CallerTokenOf = Callable[[Request], "str | None"]


class StorePut(_Body):
    namespace: list[str]
    key: str
    value: dict[str, Any]
    index: Literal[False] | list[str] | None = Field(
        None, description="false: not indexed; None: the defaults."
    )
    ttl: float | None = Field(None, gt=0, description="Minutes the item lives after a write or a read.")


class StoreDelete(_Body):
    namespace: list[str]
    key: str


class StoreSearch(_Body):
    namespace_prefix: list[str] = Field(default_factory=list)
    filter: dict[str, Any] | None = Field(None, description="Top-level value fields: equal, or $ne/$gt/...")
    limit: int = Field(10, gt=0, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    query: str | None = Field(None, min_length=1, max_length=MAX_QUERY_CHARS)
    refresh_ttl: bool | None = None


class StoreNamespaces(_Body):
    prefix: list[str] | None = None
    suffix: list[str] | None = None
    max_depth: int | None = Field(None, gt=0, le=64)
    limit: int = Field(100, gt=0, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


@dataclass
class StoreItem:
    """One item, its value decrypted; ``score`` is its similarity to a search's query."""

    namespace: list[str]
    key: str
    value: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    score: float | None = None

    def public(self, *, scored: bool = False) -> dict[str, Any]:
        """LangGraph's ``Item`` (``SearchItem`` with ``scored``)."""
        item: dict[str, Any] = {
            "namespace": self.namespace,
            "key": self.key,
            "value": self.value,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }
        if scored:
            item["score"] = self.score
        return item


class StoreFull(Exception):
    """The owner holds ``max_items_per_owner`` live items already."""


class ItemStore:
    """The ``agent_store_items`` table (SQLAlchemy Core; blocking calls) and the embeddings
    client that indexes items for semantic search."""

    def __init__(
        self,
        database: Database,
        config: StoreConfig,
        *,
        embeddings: Embeddings | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        """Args:
        database: The metadata database.
        config: Bounds, TTLs and the embeddings model.
        embeddings: Embeds index text and queries (the gateway's endpoint); None: no semantic search.
        keyring: Seals values (``WELIP_ENCRYPTION_KEYS`` or ``..._FILE`` by default).

        Raises:
            ValueError: The configured keys are malformed.
        """
        self._engine = database.engine
        self.config = config
        self.embeddings = embeddings if config.embeddings_model else None
        self._keyring = keyring if keyring is not None else keyring_from_env()

    # -- writes -------------------------------------------------------------------

    def put(
        self,
        owner: str,
        namespace: list[str],
        key: str,
        value: dict[str, Any],
        *,
        vector: list[float] | None,
        ttl_minutes: float | None,
    ) -> None:
        """Insert or replace the item (its ``created_at`` kept while it lives).

        Raises:
            StoreFull: A new item past ``max_items_per_owner``.
        """
        now = utcnow()
        ns = SEPARATOR.join(namespace)
        row = {
            "value": self._seal(owner, ns, key, value),
            "embedding": _unit(vector) if vector is not None else None,
            "ttl_minutes": ttl_minutes,
            "expires_at": now + timedelta(minutes=ttl_minutes) if ttl_minutes else None,
            "updated_at": now,
        }
        try:
            self._put(owner, ns, key, row, now)
        except sa.exc.IntegrityError:  # another replica inserted it first: replace theirs
            self._put(owner, ns, key, row, now)

    def _put(self, owner: str, ns: str, key: str, row: dict[str, Any], now: datetime) -> None:
        where = _pk(owner, ns, key)
        with self._engine.begin() as conn:
            current = conn.execute(
                sa.select(agent_store_items.c.expires_at).where(*where).with_for_update()
            ).first()
            live = current is not None and not _expired(current[0], now)
            if not live:
                count = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(agent_store_items)
                    .where(agent_store_items.c.owner == owner, _live(now))
                ).scalar_one()
                if count >= self.config.max_items_per_owner:
                    raise StoreFull(f"you hold {count} items, the most this store keeps per principal")
            if current is None:
                conn.execute(
                    agent_store_items.insert().values(
                        owner=owner, namespace=ns, key=key, created_at=now, **row
                    )
                )
            else:
                created = {} if live else {"created_at": now}
                conn.execute(agent_store_items.update().where(*where).values(**row, **created))

    def delete(self, owner: str, namespace: list[str], key: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(agent_store_items.delete().where(*_pk(owner, SEPARATOR.join(namespace), key)))

    def sweep(self) -> int:
        """Delete every expired item; how many."""
        with self._engine.begin() as conn:
            return conn.execute(
                agent_store_items.delete().where(agent_store_items.c.expires_at <= utcnow())
            ).rowcount

    # -- reads --------------------------------------------------------------------

    def get(self, owner: str, namespace: list[str], key: str, *, refresh_ttl: bool) -> StoreItem | None:
        """The owner's live item, its TTL renewed with ``refresh_ttl``."""
        now = utcnow()
        ns = SEPARATOR.join(namespace)
        with self._engine.begin() as conn:
            row = conn.execute(_ITEM_COLUMNS.where(*_pk(owner, ns, key), _live(now))).first()
            if row is None:
                return None
            if refresh_ttl:
                self._refresh(conn, owner, [row], now)
        return self._item(owner, row)

    def search(
        self,
        owner: str,
        prefix: list[str],
        *,
        value_filter: dict[str, Any],
        limit: int,
        offset: int,
        query_vector: list[float] | None,
        refresh_ttl: bool,
    ) -> list[StoreItem]:
        """The owner's live items under ``prefix`` matching ``value_filter``: most similar to the query
        first (indexed items only) with ``query_vector``, else most recently updated first."""
        now = utcnow()
        where = [agent_store_items.c.owner == owner, _live(now)]
        if prefix:
            ns = SEPARATOR.join(prefix)
            column = agent_store_items.c.namespace
            # substr, not LIKE: exact and case-sensitive on both dialects (SQLite's LIKE folds case).
            under = sa.func.substr(column, 1, len(ns) + 1) == ns + SEPARATOR
            where.append(sa.or_(column == ns, under))
        newest = (
            agent_store_items.c.updated_at.desc(),
            agent_store_items.c.namespace,
            agent_store_items.c.key,
        )
        found: list[tuple[Any, float | None]] = []
        with self._engine.begin() as conn:
            if query_vector is None and not value_filter:
                rows = list(
                    conn.execute(_ITEM_COLUMNS.where(*where).order_by(*newest).limit(limit).offset(offset))
                )
                found = [(r, None) for r in rows]
            elif query_vector is None:
                matched = 0
                for row in conn.execute(_ITEM_COLUMNS.where(*where).order_by(*newest)):
                    if _matches(self._value(owner, row), value_filter):
                        matched += 1
                        if matched > offset:
                            found.append((row, None))
                        if len(found) == limit:
                            break
            else:
                found = self._ranked(conn, owner, where, newest, query_vector, value_filter, limit, offset)
            if refresh_ttl:
                self._refresh(conn, owner, [r for r, _ in found], now)
        return [self._item(owner, row, score) for row, score in found]

    def _ranked(
        self,
        conn: sa.Connection,
        owner: str,
        where: list[Any],
        newest: tuple[Any, ...],
        query_vector: list[float],
        value_filter: dict[str, Any],
        limit: int,
        offset: int,
    ) -> list[tuple[Any, float | None]]:
        """The page of indexed items best ranked for the query: the vectors are read first, then
        the rows in rank order, a batch at a time, until the page is full (values are the costly
        part of a row to read: 10,000 of them take about twice as long as their vectors)."""
        c = agent_store_items.c
        vectors = list(
            conn.execute(
                sa.select(c.namespace, c.key, c.embedding)
                .where(*where, c.embedding.is_not(None))
                .order_by(*newest)
            )
        )
        scores, order = _rank(_unit(query_vector), [bytes(v[2]) for v in vectors])
        found: list[tuple[Any, float | None]] = []
        matched, start, batch = 0, 0, offset + limit
        while start < len(order) and len(found) < limit:
            chosen = [(vectors[i][0], vectors[i][1], scores[i]) for i in order[start : start + batch]]
            start, batch = start + batch, _RANK_BATCH
            pairs = [(ns, key) for ns, key, _ in chosen]
            rows = conn.execute(_ITEM_COLUMNS.where(*where, sa.tuple_(c.namespace, c.key).in_(pairs)))
            by_address = {(r._mapping["namespace"], r._mapping["key"]): r for r in rows}
            for ns, key, score in chosen:
                row = by_address.get((ns, key))
                if row is None or (value_filter and not _matches(self._value(owner, row), value_filter)):
                    continue  # deleted since, or filtered out
                matched += 1
                if matched > offset:
                    found.append((row, score))
                if len(found) == limit:
                    break
        return found

    def namespaces(
        self,
        owner: str,
        *,
        prefix: list[str] | None,
        suffix: list[str] | None,
        max_depth: int | None,
        limit: int,
        offset: int,
    ) -> list[list[str]]:
        """The owner's namespaces holding live items (``*`` in ``prefix``/``suffix`` matches any
        label), cut to ``max_depth`` labels, sorted."""
        query = sa.select(agent_store_items.c.namespace).distinct()
        query = query.where(agent_store_items.c.owner == owner, _live(utcnow()))
        with self._engine.connect() as conn:
            names = [r[0].split(SEPARATOR) for r in conn.execute(query)]
        matching = {
            tuple(labels[:max_depth] if max_depth else labels)
            for labels in names
            if _labels_match(labels, prefix or [], at_end=False)
            and _labels_match(labels, suffix or [], at_end=True)
        }
        return [list(ns) for ns in sorted(matching)][offset : offset + limit]

    # -- rows ---------------------------------------------------------------------

    def _seal(self, owner: str, ns: str, key: str, value: dict[str, Any]) -> Any:
        if not self._keyring.enabled:
            return value
        return self._keyring.encrypt(json.dumps(value), _value_context(owner, ns, key))

    def _value(self, owner: str, row: Any) -> dict[str, Any]:
        m = row._mapping
        value = m["value"]
        if isinstance(value, str):  # sealed by put (a plaintext value is an object)
            value = json.loads(self._keyring.decrypt(value, _value_context(owner, m["namespace"], m["key"])))
        return value

    def _item(self, owner: str, row: Any, score: float | None = None) -> StoreItem:
        m = row._mapping
        return StoreItem(
            namespace=m["namespace"].split(SEPARATOR),
            key=m["key"],
            value=self._value(owner, row),
            created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
            updated_at=as_utc(m["updated_at"]),  # type: ignore[arg-type]
            score=score,
        )

    @staticmethod
    def _refresh(conn: sa.Connection, owner: str, rows: list[Any], now: datetime) -> None:
        for row in rows:
            m = row._mapping
            if m["ttl_minutes"]:
                conn.execute(
                    agent_store_items.update()
                    .where(*_pk(owner, m["namespace"], m["key"]))
                    .values(expires_at=now + timedelta(minutes=m["ttl_minutes"]))
                )


_RANK_BATCH = 256  # rows read at a time past the first page of a ranked search

_ITEM_COLUMNS = sa.select(
    agent_store_items.c.namespace,
    agent_store_items.c.key,
    agent_store_items.c.value,
    agent_store_items.c.ttl_minutes,
    agent_store_items.c.created_at,
    agent_store_items.c.updated_at,
)


def _pk(owner: str, ns: str, key: str) -> tuple[Any, ...]:
    c = agent_store_items.c
    return (c.owner == owner, c.namespace == ns, c.key == key)


def _live(now: datetime) -> Any:
    expires = agent_store_items.c.expires_at
    return sa.or_(expires.is_(None), expires > now)


def _expired(expires_at: datetime | None, now: datetime) -> bool:
    expires_at = as_utc(expires_at)
    return expires_at is not None and expires_at <= now


def _value_context(owner: str, ns: str, key: str) -> str:
    # Bound to the item: a value copied onto another owner's or key's row fails authentication.
    return "agent_store_items.value:" + json.dumps([owner, ns, key])


def _unit(vector: list[float]) -> bytes:
    """``vector`` scaled to length 1, as little-endian float32s (what the ``embedding`` column holds)."""
    array = np.asarray(vector, dtype="<f4")
    norm = float(np.linalg.norm(array))
    return (array / norm if norm > 0 else array).astype("<f4").tobytes()


def _rank(query: bytes, vectors: list[bytes]) -> tuple[list[float | None], list[int]]:
    """Cosine similarity of each unit vector to the unit ``query``, and the indices best first;
    a vector of another dimension (an older model's) is left out."""
    same = [i for i, v in enumerate(vectors) if v is not None and len(v) == len(query)]
    scores: list[float | None] = [None] * len(vectors)
    if not same:
        return scores, []
    q = np.frombuffer(query, dtype="<f4")
    matrix = np.frombuffer(b"".join(vectors[i] for i in same), dtype="<f4").reshape(len(same), len(q))
    similarity = matrix @ q
    for i, s in zip(same, similarity.tolist(), strict=True):
        scores[i] = float(s)
    # Stable: equal scores keep the newest-first order of the candidates.
    best = np.argsort(-similarity, kind="stable")
    return scores, [same[i] for i in best.tolist()]


def _matches(value: dict[str, Any], value_filter: dict[str, Any]) -> bool:
    """Whether ``value``'s top-level fields satisfy ``value_filter`` (equality, or ``{"$gt": x}`` ...)."""
    for field, condition in value_filter.items():
        if field not in value:
            return False
        actual = value[field]
        if _is_operators(condition):
            for op, operand in condition.items():
                if not _compare(op, actual, operand):
                    return False
        elif actual != condition:
            return False
    return True


def _is_operators(condition: Any) -> bool:
    return isinstance(condition, dict) and bool(condition) and all(k.startswith("$") for k in condition)


def _compare(op: str, actual: Any, operand: Any) -> bool:
    if op == "$eq":
        return bool(actual == operand)
    if op == "$ne":
        return bool(actual != operand)
    # Orders only numbers with numbers and strings with strings (bool is no number here).
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (actual, operand))
    if not numbers and not (isinstance(actual, str) and isinstance(operand, str)):
        return False
    return {
        "$gt": actual > operand,
        "$gte": actual >= operand,
        "$lt": actual < operand,
        "$lte": actual <= operand,
    }[op]


def _labels_match(labels: list[str], pattern: list[str], *, at_end: bool) -> bool:
    if len(pattern) > len(labels):
        return False
    part = labels[len(labels) - len(pattern) :] if at_end else labels[: len(pattern)]
    return all(p in ("*", label) for p, label in zip(pattern, part, strict=True))


def index_text(value: dict[str, Any], fields: list[str], max_chars: int) -> str:
    """The text embedded for ``value``: each field's (``$``: the whole value as JSON; ``a.b``:
    a dotted path of object keys, a list there giving all its elements), joined by new lines."""
    parts: list[str] = []
    for field in fields:
        found: list[Any] = [value] if field == "$" else _at_path(value, field.split("."))
        for item in found:
            parts.append(item if isinstance(item, str) else json.dumps(item, ensure_ascii=False))
    return "\n".join(p for p in parts if p)[:max_chars]


def _at_path(value: Any, path: list[str]) -> list[Any]:
    current = [value]
    for name in path:
        current = [item[name] for item in current if isinstance(item, dict) and name in item]
    return [x for item in current for x in (item if isinstance(item, list) else [item])]


# -- HTTP ---------------------------------------------------------------------------


def build_store_router(
    store: ItemStore,
    owner_of: OwnerOf,
    limits: CallerJsonLimits | None = None,
    caller_token_of: CallerTokenOf | None = None,
) -> APIRouter:
    """LangGraph's ``/store`` routes over ``store``, each scoped to ``owner_of(request)``.

    Args:
        limits: Bounds on an item's ``value`` and a search's ``filter`` (the app's ``caller_json``).
        caller_token_of: The caller token the embeddings calls of a request send (the gateway
            then counts and audits them under the caller); None: they send none.
    """
    router = APIRouter()
    config = store.config
    limits = limits or CallerJsonLimits()

    def check_namespace(labels: list[str], param: str, *, wildcards: bool = False) -> None:
        if len(labels) > config.max_namespace_depth:
            raise _invalid(
                f"{param} has {len(labels)} labels, over the bound of {config.max_namespace_depth}.", param
            )
        for label in labels:
            if not label or SEPARATOR in label or not _storable(label):
                raise _invalid(f"{param} label {label!r} must be a non-empty string without periods.", param)
            if len(label) > config.max_label_chars:
                raise _invalid(
                    f"{param} label is over the bound of {config.max_label_chars} characters.", param
                )
            if label == "*" and not wildcards:
                raise _invalid(f"{param} label `*` is a wildcard of namespace listings only.", param)

    def check_item_address(namespace: list[str], key: str) -> None:
        if not namespace:
            raise _invalid("namespace must have at least one label.", "namespace")
        check_namespace(namespace, "namespace")
        if namespace[0] == RESERVED_ROOT:
            raise _invalid(
                f"The namespace label `{RESERVED_ROOT}` is reserved as the first one.", "namespace"
            )
        if not key or not _storable(key):
            raise _invalid("key must be a non-empty string.", "key")
        if len(key) > config.max_key_chars:
            raise _invalid(f"key is over the bound of {config.max_key_chars} characters.", "key")

    def refresh(asked: bool | None) -> bool:
        return config.refresh_on_read if asked is None else asked

    async def embed(request: Request, text: str, param: str) -> list[float]:
        embeddings = store.embeddings
        if embeddings is None:
            raise _not_implemented(f"`{param}` (semantic search: no embeddings model is configured)", param)
        from welip.rag import EmbeddingsError

        reset = caller_token.set(caller_token_of(request) if caller_token_of is not None else None)
        try:
            [vector] = await embeddings.embed([text])
        except EmbeddingsError as exc:
            raise OpenAIError(
                502, f"The embeddings endpoint failed: {exc}", type="server_error", code="embeddings_failed"
            ) from None
        finally:
            caller_token.reset(reset)
        return vector

    @router.put(
        "/store/items",
        summary="Put an item (insert or replace)",
        status_code=204,
        openapi_extra=_spec(StorePut),
    )
    async def put_item(request: Request) -> Response:
        body = _parse(StorePut, await request.body())
        check_item_address(body.namespace, body.key)
        _check_value(body.value, limits, "value")
        ttl = body.ttl if body.ttl is not None else config.default_ttl_minutes
        if ttl is not None and ttl > config.max_ttl_minutes:
            raise _invalid(f"ttl is over the bound of {config.max_ttl_minutes} minutes.", "ttl")
        fields = [] if body.index is False else config.index_fields if body.index is None else body.index
        if len(fields) > MAX_INDEX_FIELDS or any(not f or len(f) > MAX_INDEX_PATH_CHARS for f in fields):
            raise _invalid(
                f"index lists at most {MAX_INDEX_FIELDS} paths of 1 to {MAX_INDEX_PATH_CHARS} characters.",
                "index",
            )
        vector = None
        # Indexed by default where search can use it; an explicit list asks for it (501 without).
        if fields and (store.embeddings is not None or body.index is not None):
            text = index_text(body.value, fields, config.max_index_chars)
            if text:
                vector = await embed(request, text, "index")
        try:
            await asyncio.to_thread(
                store.put,
                owner_of(request),
                body.namespace,
                body.key,
                body.value,
                vector=vector,
                ttl_minutes=ttl,
            )
        except StoreFull as exc:
            raise OpenAIError(
                409, f"The store is full: {exc}. Delete items, or put them with a ttl.", code="store_full"
            ) from None
        return Response(status_code=204)

    @router.get("/store/items", summary="One item (404 when missing, expired or another principal's)")
    async def get_item(request: Request, namespace: str = "", key: str = "") -> dict[str, Any]:
        _query(request, ("namespace", "key", "refresh_ttl"), {})
        labels = namespace.split(SEPARATOR)
        check_item_address(labels, key)
        asked = request.query_params.get("refresh_ttl")
        if asked is not None and asked.lower() not in ("true", "false"):
            raise _invalid("refresh_ttl must be true or false.", "refresh_ttl")
        item = await asyncio.to_thread(
            store.get,
            owner_of(request),
            labels,
            key,
            refresh_ttl=refresh(None if asked is None else asked.lower() == "true"),
        )
        if item is None:
            raise OpenAIError(
                404, f"Item `{key}` not found in namespace `{namespace}`.", code="item_not_found", param=None
            )
        return item.public()

    @router.delete(
        "/store/items",
        summary="Delete an item (none there: nothing to do)",
        status_code=204,
        openapi_extra=_spec(StoreDelete),
    )
    async def delete_item(request: Request) -> Response:
        body = _parse(StoreDelete, await request.body())
        check_item_address(body.namespace, body.key)
        await asyncio.to_thread(store.delete, owner_of(request), body.namespace, body.key)
        return Response(status_code=204)

    @router.post(
        "/store/items/search",
        summary="Search items under a namespace prefix",
        openapi_extra=_spec(StoreSearch),
    )
    async def search_items(request: Request) -> dict[str, Any]:
        body = _parse(StoreSearch, await request.body())
        check_namespace(body.namespace_prefix, "namespace_prefix")
        search_filter = body.filter or {}
        _check_filter(search_filter, limits)
        vector = await embed(request, body.query, "query") if body.query is not None else None
        items = await asyncio.to_thread(
            store.search,
            owner_of(request),
            body.namespace_prefix,
            value_filter=search_filter,
            limit=body.limit,
            offset=body.offset,
            query_vector=vector,
            refresh_ttl=refresh(body.refresh_ttl),
        )
        return {"items": [item.public(scored=True) for item in items]}

    @router.post(
        "/store/namespaces", summary="The namespaces holding your items", openapi_extra=_spec(StoreNamespaces)
    )
    async def list_namespaces(request: Request) -> dict[str, Any]:
        body = _parse(StoreNamespaces, await request.body())
        check_namespace(body.prefix or [], "prefix", wildcards=True)
        check_namespace(body.suffix or [], "suffix", wildcards=True)
        namespaces = await asyncio.to_thread(
            store.namespaces,
            owner_of(request),
            prefix=body.prefix,
            suffix=body.suffix,
            max_depth=body.max_depth,
            limit=body.limit,
            offset=body.offset,
        )
        return {"namespaces": namespaces}

    return router


def _spec(model: type[_Body]) -> dict[str, Any]:
    """The route's ``openapi_extra``: its JSON body (the routes parse bodies themselves)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _storable(text: str) -> bool:
    """Whether the database takes ``text`` as it is (PostgreSQL refuses NUL and lone surrogates)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_value(value: Any, limits: CallerJsonLimits, param: str) -> None:
    try:
        _check_json(value, limits, param)
    except UnicodeEncodeError:
        raise _invalid(f"{param} holds a lone UTF-16 surrogate, which is no text.", param) from None


def _check_filter(search_filter: dict[str, Any], limits: CallerJsonLimits) -> None:
    _check_value(search_filter, limits, "filter")
    if len(search_filter) > MAX_FILTER_KEYS:
        raise _invalid(f"filter has more than {MAX_FILTER_KEYS} fields.", "filter")
    for field, condition in search_filter.items():
        if _is_operators(condition):
            unknown = sorted(set(condition) - set(FILTER_OPERATORS))
            if unknown:
                raise _invalid(
                    f"filter.{field}: unknown operators {unknown} (use {list(FILTER_OPERATORS)}).",
                    f"filter.{field}",
                )
