// river-bench — the River peer of sbx's dispatch benchmark (tests/bench/bench.py).
//
// River (github.com/riverqueue/river, riverpgxv5) is the closest peer of sbx:
// a durable queue that writes every job state to PostgreSQL. Like the sbx run
// it is compared with, every job is enqueued first and one process then drains
// them, so the run is two commands:
//
//	river-bench insert DATABASE_URL JOBS   River's own migrations (rivermigrate,
//	                                      up to its latest), an empty river_job,
//	                                      then JOBS no-op jobs by InsertMany in
//	                                      chunks; prints {"jobs", "insert_s"}.
//	river-bench work DATABASE_URL MODE     a client with a no-op worker until
//	                                      SIGTERM (bench.py stops it when River's
//	                                      own table shows every job completed).
//
// MODE is "defaults" (River's defaults; MaxWorkers, which River requires, is
// 100 as in its documentation) or "tuned" (MaxWorkers 500, FetchCooldown 1 ms,
// FetchPollInterval 5 ms: the throughput settings issue 14 names).
// The figures (jobs/s from river_job, CPU of this process and of PostgreSQL)
// are taken by bench.py from outside, the same way as for sbx-worker.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// insertChunk keeps one InsertMany (one multi-row INSERT) well inside
// PostgreSQL's 65,535 bind parameters.
const insertChunk = 1000

type NoopArgs struct {
	ProjectID string   `json:"project_id"`
	Command   []string `json:"command"`
}

func (NoopArgs) Kind() string { return "sbx_bench_noop" }

type NoopWorker struct {
	river.WorkerDefaults[NoopArgs]
}

func (w *NoopWorker) Work(ctx context.Context, job *river.Job[NoopArgs]) error { return nil }

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "river-bench: "+format+"\n", args...)
	os.Exit(1)
}

func insert(ctx context.Context, pool *pgxpool.Pool, jobs int) {
	driver := riverpgxv5.New(pool)
	migrator, err := rivermigrate.New(driver, nil)
	if err != nil {
		die("rivermigrate: %v", err)
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		die("migrate: %v", err)
	}
	if _, err := pool.Exec(ctx, "TRUNCATE river_job"); err != nil {
		die("truncate: %v", err)
	}
	client, err := river.NewClient(driver, &river.Config{})
	if err != nil {
		die("client: %v", err)
	}
	t0 := time.Now()
	for i := 0; i < jobs; i += insertChunk {
		batch := make([]river.InsertManyParams, 0, insertChunk)
		for k := i; k < jobs && k < i+insertChunk; k++ {
			batch = append(batch, river.InsertManyParams{Args: NoopArgs{
				ProjectID: "p" + strconv.Itoa(k%1000), Command: []string{"true"}}})
		}
		if _, err := client.InsertMany(ctx, batch); err != nil {
			die("InsertMany: %v", err)
		}
	}
	out, _ := json.Marshal(map[string]any{"jobs": jobs, "insert_s": time.Since(t0).Seconds()})
	fmt.Println(string(out))
}

func work(ctx context.Context, pool *pgxpool.Pool, mode string) {
	workers := river.NewWorkers()
	river.AddWorker(workers, &NoopWorker{})
	cfg := &river.Config{Workers: workers,
		Queues: map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 100}}}
	switch mode {
	case "defaults":
	case "tuned":
		cfg.Queues[river.QueueDefault] = river.QueueConfig{MaxWorkers: 500}
		cfg.FetchCooldown = time.Millisecond
		cfg.FetchPollInterval = 5 * time.Millisecond
	default:
		die("mode %q: want defaults or tuned", mode)
	}
	client, err := river.NewClient(riverpgxv5.New(pool), cfg)
	if err != nil {
		die("client: %v", err)
	}
	if err := client.Start(ctx); err != nil {
		die("start: %v", err)
	}
	fmt.Fprintln(os.Stderr, "river-bench: started")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Stop(stopCtx); err != nil {
		die("stop: %v", err)
	}
}

func main() {
	if len(os.Args) != 4 {
		die("usage: river-bench insert DATABASE_URL JOBS | work DATABASE_URL defaults|tuned")
	}
	ctx := context.Background()
	pcfg, err := pgxpool.ParseConfig(os.Args[2])
	if err != nil {
		die("database url: %v", err)
	}
	// A pool big enough that River's producer, completer and notifier never
	// queue for a connection (pgxpool's default is max(4, CPUs)).
	pcfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		die("connect: %v", err)
	}
	defer pool.Close()
	switch os.Args[1] {
	case "insert":
		n, err := strconv.Atoi(os.Args[3])
		if err != nil || n <= 0 {
			die("JOBS: %q", os.Args[3])
		}
		insert(ctx, pool, n)
	case "work":
		work(ctx, pool, os.Args[3])
	default:
		die("unknown command %q", os.Args[1])
	}
}
