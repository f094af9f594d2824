package storage

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkUpload1GiB uploads a 1 GiB file of random data to a local MinIO
// (data dir on the same disk) and, side by side, copies the same file with
// cp(1), so their MiB/s compare directly. cp+sync also flushes the copy to
// disk, as MinIO does with what it stores.
//
//	go test ./internal/storage -run '^$' -bench Upload1GiB -benchtime 3x
//
// NODEFORGE_BENCH_SWEEP=1 adds part size / concurrency variants.
func BenchmarkUpload1GiB(b *testing.B) {
	const size = 1 << 30
	dir := b.TempDir()
	src, sum := writeDenseFile(b, dir, size)
	dst := filepath.Join(dir, "copy.qcow2")

	b.Run("cp", func(b *testing.B) {
		benchLoop(b, size, func() {
			run(b, "cp", src, dst)
		})
	})
	b.Run("cp+sync", func(b *testing.B) {
		benchLoop(b, size, func() {
			run(b, "cp", src, dst)
			run(b, "sync", dst)
		})
	})
	os.Remove(dst)

	srv := startMinio(b, minioConfig{})
	type variant struct {
		partMiB, threads int
		noCRC            bool
	}
	variants := []variant{{partMiB: DefaultPartSize >> 20, threads: DefaultConcurrency}}
	if os.Getenv("NODEFORGE_BENCH_SWEEP") == "1" {
		variants = append(variants, variant{partMiB: 64, threads: 4, noCRC: true},
			variant{partMiB: 16, threads: 4}, variant{partMiB: 32, threads: 8}, variant{partMiB: 64, threads: 2},
			variant{partMiB: 64, threads: 8}, variant{partMiB: 128, threads: 4})
	}
	for _, v := range variants {
		st := srv.bucketStore(b, func(o *S3Options) {
			o.PartSize = int64(v.partMiB) << 20
			o.Concurrency = v.threads
			o.DisablePartChecksums = v.noCRC
		})
		name := fmt.Sprintf("s3/part=%dMiB/threads=%d", v.partMiB, v.threads)
		if v.noCRC {
			name += "/no-part-crc"
		}
		b.Run(name+"/sha256-known", func(b *testing.B) {
			benchLoop(b, size, func() {
				if _, err := st.PutFile(context.Background(), "bench/img.qcow2", src, PutOptions{SHA256: sum}); err != nil {
					b.Fatal(err)
				}
			})
		})
		b.Run(name+"/sha256-computed", func(b *testing.B) {
			benchLoop(b, size, func() {
				if _, err := st.PutFile(context.Background(), "bench/img.qcow2", src, PutOptions{}); err != nil {
					b.Fatal(err)
				}
			})
		})
		_ = st.Delete(context.Background(), "bench/img.qcow2")
	}
}

func benchLoop(b *testing.B, size int64, fn func()) {
	b.SetBytes(size)
	var total time.Duration
	for b.Loop() {
		// Flush what the previous iteration left dirty, untimed, so each
		// measurement starts from the same state.
		b.StopTimer()
		run(b, "sync")
		b.StartTimer()
		start := time.Now()
		fn()
		total += time.Since(start)
	}
	b.ReportMetric(float64(size)*float64(b.N)/(1<<20)/total.Seconds(), "MiB/s")
}

func run(b *testing.B, name string, args ...string) {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s: %v: %s", name, err, out)
	}
}

// writeDenseFile writes size bytes of random data (no holes: cp and the
// upload both move every byte) and returns its path and sha256.
func writeDenseFile(b *testing.B, dir string, size int64) (string, string) {
	p := filepath.Join(dir, "bench-"+strconv.FormatInt(size, 10)+".qcow2")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	rng := newBenchRand()
	for off := int64(0); off < size; off += int64(len(buf)) {
		_, _ = rng.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	sum, _, err := FileSHA256(p)
	if err != nil {
		b.Fatal(err)
	}
	return p, sum
}
