package main

// Run with `tools/ferretdb/build.sh test`: against FerretDB's source as build.sh fixes it.

import (
	"context"
	"database/sql"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
	_ "modernc.org/sqlite"
)

// statements keeps the SQL FerretDB runs: its SQL layer logs each statement at debug
// level, as ">>> " and the statement.
type statements struct {
	mu  sync.Mutex
	sql []string
}

func (s *statements) Enabled(context.Context, slog.Level) bool { return true }

func (s *statements) Handle(_ context.Context, r slog.Record) error {
	if query, ok := strings.CutPrefix(r.Message, ">>> "); ok {
		s.mu.Lock()
		s.sql = append(s.sql, query)
		s.mu.Unlock()
	}
	return nil
}

func (s *statements) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s *statements) WithGroup(string) slog.Handler      { return s }

func (s *statements) byID() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var found []string
	for _, query := range s.sql {
		if strings.Contains(query, "WHERE") && strings.Contains(query, "_id") {
			found = append(found, query)
		}
	}
	return found
}

// Every statement FerretDB runs to find, update or delete a document by `_id` uses the
// collection's `_id` index; and the expression FerretDB had before the fix would not.
func TestDocumentsAreFoundByIDThroughTheIndex(t *testing.T) {
	dir := t.TempDir()
	seen := &statements{}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Logger:    slog.New(seen),
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() { _ = f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	client, err := mongo.Connect(ctx, options.Client().ApplyURI(f.MongoDBURI()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Disconnect(context.Background()) }()
	jobs := client.Database("pyron").Collection("jobs")

	docs := []any{
		bson.D{{Key: "_id", Value: "a"}, {Key: "n", Value: 1}},
		bson.D{{Key: "_id", Value: "b"}, {Key: "n", Value: 2}},
		bson.D{{Key: "_id", Value: "c"}, {Key: "n", Value: 3}},
	}
	if _, err := jobs.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	var got struct{ N int }
	if err := jobs.FindOne(ctx, bson.D{{Key: "_id", Value: "b"}}).Decode(&got); err != nil || got.N != 2 {
		t.Fatalf("find by _id: %+v, %v", got, err)
	}
	set := bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: 20}}}}
	if r, err := jobs.UpdateOne(ctx, bson.D{{Key: "_id", Value: "b"}}, set); err != nil || r.ModifiedCount != 1 {
		t.Fatalf("update by _id: %+v, %v", r, err)
	}
	upsert := options.Update().SetUpsert(true)
	if r, err := jobs.UpdateOne(ctx, bson.D{{Key: "_id", Value: "a"}}, set, upsert); err != nil || r.ModifiedCount != 1 {
		t.Fatalf("upsert of an existing _id: %+v, %v", r, err)
	}
	if r, err := jobs.DeleteOne(ctx, bson.D{{Key: "_id", Value: "c"}}); err != nil || r.DeletedCount != 1 {
		t.Fatalf("delete by _id: %+v, %v", r, err)
	}
	var left []struct {
		ID string `bson:"_id"`
		N  int
	}
	cursor, err := jobs.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		t.Fatal(err)
	}
	if err := cursor.All(ctx, &left); err != nil {
		t.Fatal(err)
	}
	if len(left) != 2 || left[0].ID != "a" || left[0].N != 20 || left[1].ID != "b" || left[1].N != 20 {
		t.Fatalf("documents after the changes: %+v", left)
	}

	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "pyron.sqlite")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	plan := func(query string) string {
		args := make([]any, strings.Count(query, "?"))
		for i := range args {
			args[i] = `"a"`
		}
		rows, err := db.Query("EXPLAIN QUERY PLAN "+query, args...)
		if err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		defer rows.Close()
		var steps []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			steps = append(steps, detail)
		}
		return strings.Join(steps, "; ")
	}

	kinds := map[string]bool{}
	for _, query := range seen.byID() {
		kind := strings.Fields(query)[0]
		kinds[kind] = true
		if p := plan(query); !strings.Contains(p, "USING INDEX") || strings.Contains(p, "SCAN") {
			t.Errorf("%s: %s", query, p)
		}
		unfixed := strings.ReplaceAll(query, "->'_id'", "->'$._id'")
		if p := plan(unfixed); !strings.Contains(p, "SCAN") {
			t.Errorf("the expression before the fix should scan, but: %s: %s", unfixed, p)
		}
	}
	for _, kind := range []string{"SELECT", "UPDATE", "DELETE"} {
		if !kinds[kind] {
			t.Errorf("no %s by _id among FerretDB's statements: %q", kind, seen.byID())
		}
	}
}
