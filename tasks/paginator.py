"""A paginator for the admin's history pages that does not count big tables.

Django's changelist counts the rows it pages through with COUNT(*), which
reads the whole table (or the whole filtered part) on every page: seconds
at millions of rows. Past ESTIMATE_ABOVE rows the PostgreSQL planner's own
estimate of the query (from the table statistics, kept by autovacuum) is
close enough for "page 3 of ~20,000" and costs nothing; below it, and on
other databases, the count is exact.
"""

import json

from django.core.paginator import Paginator
from django.db import connections
from django.utils.functional import cached_property

ESTIMATE_ABOVE = 100_000


def planner_estimate(queryset):
    """The rows PostgreSQL expects ``queryset`` to return, or None elsewhere."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    sql, params = queryset.order_by().query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedCountPaginator(Paginator):
    @cached_property
    def count(self):
        estimate = planner_estimate(self.object_list)
        if estimate is not None and estimate > ESTIMATE_ABOVE:
            return estimate
        return super().count
