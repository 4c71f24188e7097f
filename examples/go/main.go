// Command auditclient calls audit-gateway's three methods once each: GetSince (one
// page), StreamSince (cut by max_records, then resumed from the last resume_token) and
// Follow (from a few minutes back). It prints one summary line per method and exits
// non-zero on any failure.
//
//	auditclient -addr 127.0.0.1:50051   (or AUDIT_GATEWAY_ADDR)
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "example.com/audit-gateway/examples/go/auditv1"
)

const (
	pageSize   = 25 // records per StreamSince message
	maxRecords = 60 // records per StreamSince call, and the resumed call
	followMax  = 20 // records to follow before Follow ends with OK
)

func main() {
	addr := flag.String("addr", envOr("AUDIT_GATEWAY_ADDR", "127.0.0.1:50051"), "gateway host:port")
	flag.Parse()
	if err := run(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

func run(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Plain-text HTTP/2; use grpc.WithTransportCredentials for a TLS gateway.
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	client := auditv1.NewAuditServiceClient(conn)

	// GetSince: one page of the last hour.
	page, err := client.GetSince(ctx, &auditv1.GetSinceRequest{
		Number: proto.Int64(1), Units: auditv1.TimeUnit_TIME_UNIT_HOURS, Limit: proto.Int32(100),
	})
	if err != nil {
		return fmt.Errorf("GetSince: %w", err)
	}
	fmt.Printf("GetSince: %d records\n", len(page.Results))

	// StreamSince: cut at maxRecords, then resumed from the last token with the same filters.
	seen := map[string]bool{}
	first, token, err := stream(ctx, client, "", seen)
	if err != nil {
		return err
	}
	if token == "" {
		return fmt.Errorf("StreamSince: no resume_token")
	}
	resumed, _, err := stream(ctx, client, token, seen)
	if err != nil {
		return err
	}
	fmt.Printf("StreamSince: %d records, resumed: %d more, no repeats\n", first, resumed)

	// Follow: from five minutes back, polling every second, until followMax records.
	follow, err := client.Follow(ctx, &auditv1.FollowRequest{
		From:         &auditv1.FollowRequest_Since{Since: timestamppb.New(time.Now().Add(-5 * time.Minute))},
		PollInterval: durationpb.New(time.Second),
		MaxRecords:   proto.Int64(followMax),
	})
	if err != nil {
		return fmt.Errorf("Follow: %w", err)
	}
	records, last := 0, int64(0)
	for {
		msg, err := follow.Recv()
		if err == io.EOF {
			break // OK after exactly followMax records
		}
		if err != nil {
			return fmt.Errorf("Follow: %w", err)
		}
		for _, r := range msg.Records {
			if r.CreationDate < last {
				return fmt.Errorf("Follow: records out of order")
			}
			last = r.CreationDate
			records++
		}
	}
	if records != followMax {
		return fmt.Errorf("Follow: %d records, want %d", records, followMax)
	}
	fmt.Printf("Follow: %d records, oldest first\n", records)
	return nil
}

// stream runs one StreamSince call over the last hour (resuming after token when set),
// adding every record's identity to seen; it returns the records received and the last
// resume_token.
func stream(ctx context.Context, client auditv1.AuditServiceClient, token string, seen map[string]bool) (int, string, error) {
	s, err := client.StreamSince(ctx, &auditv1.StreamSinceRequest{
		Number: proto.Int64(1), Units: auditv1.TimeUnit_TIME_UNIT_HOURS,
		PageSize: proto.Int32(pageSize), MaxRecords: proto.Int64(maxRecords), ResumeToken: token,
	})
	if err != nil {
		return 0, "", fmt.Errorf("StreamSince: %w", err)
	}
	count := 0
	for {
		msg, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, "", fmt.Errorf("StreamSince: %w", err)
		}
		for _, r := range msg.Records {
			key := fmt.Sprintf("%d/%s", r.CreationDate, r.Summary)
			if seen[key] {
				return 0, "", fmt.Errorf("StreamSince: record repeated: %s", key)
			}
			seen[key] = true
			count++
		}
		token = msg.ResumeToken
	}
	if count != maxRecords {
		return 0, "", fmt.Errorf("StreamSince: %d records, want %d", count, maxRecords)
	}
	return count, token, nil
}
