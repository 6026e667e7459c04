"""Anonymous consumers' resume points by API key."""

from lsproxy.hub.resume_points import MAX_POINTS_PER_KEY, ResumePoints


def test_a_point_is_taken_once_within_the_linger() -> None:
    points = ResumePoints(linger=300)
    points.leave(b"k", 120, now=0)
    assert points.take(b"other", now=1) is None
    assert points.take(b"k", now=300) == 120
    assert points.take(b"k", now=300) is None


def test_expired_points_are_gone() -> None:
    points = ResumePoints(linger=300)
    points.leave(b"k", 120, now=0)
    assert points.take(b"k", now=300.5) is None and len(points) == 0


def test_concurrent_connections_of_one_key_each_leave_a_point_lowest_first() -> None:
    points = ResumePoints(linger=300)
    points.leave(b"k", 500, now=0)
    points.leave(b"k", 200, now=1)
    assert points.take(b"k", now=2) == 200  # whoever comes first: duplicates, not a gap
    assert points.take(b"k", now=2) == 500


def test_bounded_per_key_and_off_with_zero_linger() -> None:
    points = ResumePoints(linger=300)
    for i in range(3 * MAX_POINTS_PER_KEY):
        points.leave(b"k", i, now=i)
    assert len(points) == MAX_POINTS_PER_KEY
    off = ResumePoints(linger=0)
    off.leave(b"k", 1, now=0)
    assert off.take(b"k", now=0) is None
