package main

// The job store: every job lives in memory and as one JSON file under
// DIR/jobs/. Files are replaced atomically (temp file, fsync, rename, fsync
// of the directory), so a crash or kill -9 leaves either the old or the new
// version of a job, never a torn one.

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

const (
	statusQueued  = "queued"
	statusRunning = "running"
	statusDone    = "done"
	statusFailed  = "failed"
)

var validKinds = map[string]bool{"workflow": true, "agent": true}

// Job is both the API representation and the on-disk record.
type Job struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Status  string    `json:"status"`
	Input   string    `json:"input"`
	Output  string    `json:"output"`
	Seq     uint64    `json:"seq"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// While running: when the claim lapses and the job goes back to the queue.
	LeaseUntil *time.Time `json:"lease_until,omitempty"`
}

var (
	errNotFound = errors.New("job not found")
	errFinished = errors.New("job already finished")
)

type Store struct {
	mu      sync.Mutex
	dir     string // DIR/jobs
	jobs    map[string]*Job
	nextSeq uint64
	lease   time.Duration
}

// OpenStore loads every job under dataDir/jobs, creating the directory if
// needed. Jobs a previous run left running are requeued: nobody is working on
// them any more. A claim holds a job for lease; see Claim.
func OpenStore(dataDir string, lease time.Duration) (*Store, error) {
	dir := filepath.Join(dataDir, "jobs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create job dir: %w", err)
	}
	s := &Store{dir: dir, jobs: map[string]*Job{}, nextSeq: 1, lease: lease}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read job dir: %w", err)
	}
	var requeued []*Job
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		if strings.HasPrefix(name, ".tmp-") {
			// A write interrupted before its rename: the job's previous
			// file (if any) is still intact.
			_ = os.Remove(path)
			continue
		}
		if e.IsDir() || !strings.HasSuffix(name, ".json") {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		var j Job
		if err := json.Unmarshal(data, &j); err != nil || j.ID+".json" != name {
			log.Printf("skipping unreadable job file %s: %v", path, err)
			continue
		}
		if j.Status == statusRunning {
			j.Status = statusQueued
			j.LeaseUntil = nil
			requeued = append(requeued, &j)
		}
		s.jobs[j.ID] = &j
		if j.Seq >= s.nextSeq {
			s.nextSeq = j.Seq + 1
		}
	}
	for _, j := range requeued {
		if err := s.persist(j); err != nil {
			return nil, err
		}
	}
	log.Printf("loaded %d jobs from %s (%d requeued)", len(s.jobs), dir, len(requeued))
	return s, nil
}

func newID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// persist writes j to its file atomically. Callers hold s.mu (or own j
// exclusively, as during OpenStore).
func (s *Store) persist(j *Job) error {
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp-"+j.ID+"-")
	if err != nil {
		return fmt.Errorf("persist job %s: %w", j.ID, err)
	}
	tmpName := tmp.Name()
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmpName)
		return fmt.Errorf("persist job %s: %w", j.ID, err)
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("persist job %s: %w", j.ID, err)
	}
	if err := os.Rename(tmpName, filepath.Join(s.dir, j.ID+".json")); err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("persist job %s: %w", j.ID, err)
	}
	return syncDir(s.dir)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// update applies change to a copy of the job and commits it only once the
// copy is on disk, so memory never claims more than the files do.
func (s *Store) update(j *Job, change func(*Job)) (Job, error) {
	next := *j
	change(&next)
	next.Updated = time.Now().UTC()
	if err := s.persist(&next); err != nil {
		return Job{}, err
	}
	*j = next
	return next, nil
}

func (s *Store) Create(kind, input string) (Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now().UTC()
	j := &Job{ID: newID(), Kind: kind, Status: statusQueued, Input: input,
		Seq: s.nextSeq, Created: now, Updated: now}
	if err := s.persist(j); err != nil {
		return Job{}, err
	}
	s.nextSeq++
	s.jobs[j.ID] = j
	return *j, nil
}

func (s *Store) Get(id string) (Job, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		return Job{}, false
	}
	return *j, true
}

// List returns the jobs in creation order, optionally filtered.
func (s *Store) List(kind, status string) []Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Job, 0, len(s.jobs))
	for _, j := range s.jobs {
		if (kind == "" || j.Kind == kind) && (status == "" || j.Status == status) {
			out = append(out, *j)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Seq < out[b].Seq })
	return out
}

// Claim marks the oldest queued job of kind as running, leased until now +
// s.lease, and returns it. Running jobs whose lease has lapsed (their runner
// died, or lost the server) go back to the queue first, so several runners
// can share one server: a claim is not a promise forever. Runners do not
// renew leases, so a job that runs longer than the lease may be claimed again;
// the first result posted wins (Finish).
func (s *Store) Claim(kind string) (Job, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now().UTC()
	for _, j := range s.jobs {
		if j.Kind == kind && j.Status == statusRunning && j.LeaseUntil != nil && j.LeaseUntil.Before(now) {
			log.Printf("job %s: lease lapsed at %s, back in the queue", j.ID, j.LeaseUntil.Format(time.RFC3339))
			if _, err := s.update(j, func(j *Job) { j.Status = statusQueued; j.LeaseUntil = nil }); err != nil {
				return Job{}, false, err
			}
		}
	}
	var oldest *Job
	for _, j := range s.jobs {
		if j.Kind == kind && j.Status == statusQueued && (oldest == nil || j.Seq < oldest.Seq) {
			oldest = j
		}
	}
	if oldest == nil {
		return Job{}, false, nil
	}
	until := now.Add(s.lease)
	j, err := s.update(oldest, func(j *Job) { j.Status = statusRunning; j.LeaseUntil = &until })
	return j, err == nil, err
}

// Finish records a runner's result. A job already done or failed keeps its
// first result.
func (s *Store) Finish(id, status, output string) (Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		return Job{}, errNotFound
	}
	if j.Status == statusDone || j.Status == statusFailed {
		return *j, errFinished
	}
	return s.update(j, func(j *Job) { j.Status = status; j.Output = output; j.LeaseUntil = nil })
}
