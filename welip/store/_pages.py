"""Pages of one owner's rows, ordered by (created_at, id): what ``after=<id>`` cursors page through."""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa


def owner_page(
    conn: sa.Connection,
    table: sa.Table,
    query: sa.Select[Any],
    owner: str,
    *,
    limit: int,
    after: str | None,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[list[sa.RowMapping], bool]:
    """A page of ``query``'s rows, after the row whose id is ``after``, and whether more follow.

    An ``after`` that is not one of ``owner``'s ids starts from the first row. (created_at,
    id) orders rows written in the same instant too.
    """
    created, key = table.c.created_at, table.c.id
    if after is not None:
        cursor = conn.execute(sa.select(created, key).where(key == after, table.c.owner == owner)).first()
        if cursor is not None:
            at, last = cursor
            if order == "desc":
                query = query.where(sa.or_(created < at, sa.and_(created == at, key < last)))
            else:
                query = query.where(sa.or_(created > at, sa.and_(created == at, key > last)))
    columns = (created.desc(), key.desc()) if order == "desc" else (created.asc(), key.asc())
    rows = list(conn.execute(query.order_by(*columns).limit(limit + 1)).mappings())
    return rows[:limit], len(rows) > limit
