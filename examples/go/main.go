// Command auditclient calls audit-gateway's three methods once each: GetSince (one
// page), StreamSince (cut by max_records, then resumed from the last resume_token) and
// Follow (from a few minutes back). It prints one summary line per method, and one more
// when the page held values the gateway sent as JSON text (json_text_paths); it exits
// non-zero on any failure. Streams and followers that end with UNAVAILABLE (a gateway
// restarting) resume from their last token or checkpoint, a few times.
//
//	auditclient -addr 127.0.0.1:50051   (or AUDIT_GATEWAY_ADDR)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "example.com/audit-gateway/examples/go/auditv1"
)

const (
	pageSize   = 25 // records per StreamSince message
	maxRecords = 60 // records per StreamSince call, and the resumed call
	followMax  = 20 // records to follow before Follow ends with OK
	attempts   = 5  // calls of a stream or follower ended by UNAVAILABLE, the first included
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
	var deep []*auditv1.AuditRecord
	for _, r := range page.Results {
		if len(r.JsonTextPaths) > 0 {
			deep = append(deep, r)
		}
	}
	if len(deep) > 0 {
		fields, err := unknownFields(deep[0])
		if err != nil {
			return fmt.Errorf("GetSince: %w", err)
		}
		key, levels, innermost := "", -1, interface{}(nil)
		for k, v := range fields {
			if l, in := deepest(v); l > levels || l == levels && k < key {
				key, levels, innermost = k, l, in
			}
		}
		text, _ := json.Marshal(innermost)
		fmt.Printf("JSON text restored in %d records; the first's deepest unknown field: %s, %d levels, innermost %s\n",
			len(deep), key, levels, text)
	}

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

	// Follow: from five minutes back, polling every second, until followMax records;
	// resumed from the last checkpoint (which a shipper would store) on UNAVAILABLE.
	req := &auditv1.FollowRequest{
		From:         &auditv1.FollowRequest_Since{Since: timestamppb.New(time.Now().Add(-5 * time.Minute))},
		PollInterval: durationpb.New(time.Second),
	}
	records, last := 0, int64(0)
	err = resuming(func() (receiver[*auditv1.FollowResponse], error) {
		req.MaxRecords = proto.Int64(int64(followMax - records))
		return client.Follow(ctx, req)
	}, func(msg *auditv1.FollowResponse) error {
		for _, r := range msg.Records {
			if r.CreationDate < last {
				return fmt.Errorf("records out of order")
			}
			last = r.CreationDate
			records++
		}
		req.From = &auditv1.FollowRequest_Checkpoint{Checkpoint: msg.Checkpoint}
		return nil
	})
	if err != nil {
		return fmt.Errorf("Follow: %w", err)
	}
	if records != followMax {
		return fmt.Errorf("Follow: %d records, want %d", records, followMax)
	}
	fmt.Printf("Follow: %d records, oldest first\n", records)
	return nil
}

// receiver is a server stream of M messages.
type receiver[M any] interface{ Recv() (M, error) }

// resuming hands each message of the stream call starts to handle, calling it again (it
// reads the caller's last token or checkpoint) when the stream ends with UNAVAILABLE, up
// to attempts calls in all.
func resuming[M any](call func() (receiver[M], error), handle func(M) error) error {
	for attempt := 0; ; attempt++ {
		err := drain(call, handle)
		if status.Code(err) != codes.Unavailable || attempt == attempts-1 {
			return err
		}
		time.Sleep(200 * time.Millisecond << attempt)
	}
}

// drain runs one call of a stream to its end.
func drain[M any](call func() (receiver[M], error), handle func(M) error) error {
	s, err := call()
	if err != nil {
		return err
	}
	for {
		msg, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := handle(msg); err != nil {
			return err
		}
	}
}

// stream runs StreamSince over the last hour (resuming after token when set) until
// maxRecords records, adding every record's identity to seen; it returns the records
// received and the last resume_token.
func stream(ctx context.Context, client auditv1.AuditServiceClient, token string, seen map[string]bool) (int, string, error) {
	count := 0
	err := resuming(func() (receiver[*auditv1.StreamSinceResponse], error) {
		return client.StreamSince(ctx, &auditv1.StreamSinceRequest{
			Number: proto.Int64(1), Units: auditv1.TimeUnit_TIME_UNIT_HOURS, PageSize: proto.Int32(pageSize),
			MaxRecords: proto.Int64(int64(maxRecords - count)), ResumeToken: token,
		})
	}, func(msg *auditv1.StreamSinceResponse) error {
		for _, r := range msg.Records {
			key := fmt.Sprintf("%d/%s", r.CreationDate, r.Summary)
			if seen[key] {
				return fmt.Errorf("record repeated: %s", key)
			}
			seen[key] = true
			count++
		}
		token = msg.ResumeToken
		return nil
	})
	if err != nil {
		return 0, "", fmt.Errorf("StreamSince: %w", err)
	}
	if count != maxRecords {
		return 0, "", fmt.Errorf("StreamSince: %d records, want %d", count, maxRecords)
	}
	return count, token, nil
}

// unknownFields returns a record's unknown_fields as plain Go values, with each value the
// gateway sent as JSON text (too deep for protobuf, listed in json_text_paths as JSON
// Pointers) parsed back.
func unknownFields(r *auditv1.AuditRecord) (map[string]interface{}, error) {
	fields := r.UnknownFields.AsMap()
	for _, path := range r.JsonTextPaths {
		keys := strings.Split(path, "/")[1:]
		for i, k := range keys {
			keys[i] = strings.NewReplacer("~1", "/", "~0", "~").Replace(k)
		}
		if _, ok := fields[keys[0]]; !ok {
			continue // in a typed field, such as /author/operations/...
		}
		var node interface{} = fields
		for _, k := range keys[:len(keys)-1] {
			node = child(node, k)
		}
		last := keys[len(keys)-1]
		var value interface{}
		if err := json.Unmarshal([]byte(child(node, last).(string)), &value); err != nil {
			return nil, fmt.Errorf("json_text_paths %s: %w", path, err)
		}
		switch n := node.(type) {
		case map[string]interface{}:
			n[last] = value
		case []interface{}:
			i, _ := strconv.Atoi(last)
			n[i] = value
		}
	}
	return fields, nil
}

// child is the item of a JSON object or array under key (an index for an array).
func child(node interface{}, key string) interface{} {
	switch n := node.(type) {
	case map[string]interface{}:
		return n[key]
	case []interface{}:
		i, _ := strconv.Atoi(key)
		return n[i]
	}
	return nil
}

// deepest returns the levels of the deepest path through a JSON value, and the value
// innermost on it.
func deepest(value interface{}) (int, interface{}) {
	var children []interface{}
	switch v := value.(type) {
	case map[string]interface{}:
		for _, c := range v {
			children = append(children, c)
		}
	case []interface{}:
		children = v
	default:
		return 0, value
	}
	levels, innermost := 0, interface{}(nil)
	for i, c := range children {
		if l, in := deepest(c); i == 0 || l > levels {
			levels, innermost = l, in
		}
	}
	return levels + 1, innermost
}
