"""What a web instance remembers of the jobs it was asked about, so a poll costs only what changed.

Reading every result object on every GET would be one S3 GET per image per poll. Result objects
change rarely (a worker writes one once; a redelivery writes the same content; a redriven dead
letter or a late image of a cancelled job replaces one), so each job's parsed results are kept
with their ETags: a poll lists the job's keys and fetches only the new or changed ones. The
manifest is kept too, and read again only when its ETag changed (a conditional GET).

Bounded: at most MAX_CACHED_ITEMS inputs and results over all jobs (about 1 KB each, so some
100 MB at worst) and MAX_CACHED_JOBS jobs, least recently polled jobs evicted first; the job being
read is never evicted, so a job of MAX_IMAGES_PER_JOB images always fits. An evicted job is read
in full on its next poll.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from batchserve.jobs.job_manifest import JobManifest
from batchserve.jobs.job_results import StoredResult

MAX_CACHED_ITEMS = 100_000
MAX_CACHED_JOBS = 1_000  # entries of jobs asked about but not read (an outage) weigh nothing: count them too


@dataclass
class CachedJob:
    manifest: JobManifest | None = None
    manifest_etag: str | None = None
    results: dict[str, StoredResult] = field(default_factory=dict)
    # One refresh of a job at a time: concurrent polls of one job share its S3 reads.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def weight(self) -> int:
        return (len(self.manifest.inputs) if self.manifest is not None else 0) + len(self.results)


class JobCache:
    def __init__(self, max_items: int = MAX_CACHED_ITEMS, max_jobs: int = MAX_CACHED_JOBS) -> None:
        self.max_items = max_items
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, CachedJob] = OrderedDict()

    def __len__(self) -> int:
        return len(self._jobs)

    def job(self, job_id: str) -> CachedJob:
        """The job's entry (a new, empty one if it was not cached), now the most recently used."""
        entry = self._jobs.get(job_id)
        if entry is None:
            entry = self._jobs[job_id] = CachedJob()
        self._jobs.move_to_end(job_id)
        return entry

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def trim(self) -> None:
        """Evict the least recently used jobs until the bound holds (the most recent one stays)."""
        total = sum(entry.weight for entry in self._jobs.values())
        while (total > self.max_items or len(self._jobs) > self.max_jobs) and len(self._jobs) > 1:
            _, evicted = self._jobs.popitem(last=False)
            total -= evicted.weight
