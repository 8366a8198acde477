"""Channel history in the database: receipts, and which publish each came from.

A Redis message carries nothing but its payload, and mqsite sends payloads
exactly as given, so that ``PUBLISH task:pubsub:channel 7`` and mqsite's own
publishes look the same to every subscriber (ours and anybody else's). A
receipt is therefore tied to its publish by what both sides know: the
channel, the payload (its SHA-256) and the time, within LINK_WINDOW.

Both sides try, each after its own row is committed: the listener looks for
the publish right after recording a receipt, and the publisher looks for
receipts right after its row commits. Whichever commits second sees the
other's row, so a receipt is linked even when it is recorded before the
publisher's transaction ends (the usual case: PUBLISH returns after the
message is delivered).

Identical payloads on one channel within the window are matched in order,
one receipt per listener per publish; a listener that missed one of them
(at-most-once) can then be linked to its neighbour. Only the link is
approximate: the rows themselves are exact.

This module knows the ORM and nothing of Redis.
"""

import hashlib
from datetime import timedelta

from django.db.models import Min

from tasks.models import PublishedMessage, ReceivedMessage

# How long after its publish a receipt may be recorded (a listener busy in a
# slow handler or waiting out a database outage records late).
LINK_WINDOW = timedelta(seconds=60)
# Listeners on other machines stamp receipts with their own clocks.
CLOCK_SKEW = timedelta(seconds=5)


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


def record(receipt):
    """Save one ReceivedMessage and link it to its publish if that is known."""
    receipt.digest = digest(receipt.payload)
    receipt.save(force_insert=True)
    published_id = (
        PublishedMessage.objects.filter(
            channel=receipt.channel,
            digest=receipt.digest,
            published_at__range=(receipt.received_at - LINK_WINDOW, receipt.received_at + CLOCK_SKEW),
        )
        .exclude(receipts__listener=receipt.listener)
        .order_by("published_at", "id")
        .values_list("id", flat=True)
        .first()
    )
    if published_id is not None:
        ReceivedMessage.objects.filter(pk=receipt.pk, published__isnull=True).update(published_id=published_id)
    return receipt


def link_publish(published):
    """Claim the receipts recorded before ``published`` was committed."""
    candidates = (
        ReceivedMessage.objects.filter(
            published__isnull=True,
            channel=published.channel,
            digest=published.digest,
            received_at__range=(published.published_at - CLOCK_SKEW, published.published_at + LINK_WINDOW),
        )
        .exclude(listener__in=ReceivedMessage.objects.filter(published=published).values("listener"))
        .order_by()
        .values("listener")
        .annotate(first_id=Min("id"))
    )
    ids = [row["first_id"] for row in candidates]
    if ids:
        ReceivedMessage.objects.filter(pk__in=ids, published__isnull=True).update(published=published)
