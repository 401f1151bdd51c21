//! The tantivy index: schema (with its version), documents built from catalog snapshots, the
//! one-pass faceting collector, text queries with typo tolerance, spelling and completion.
//!
//! Everything here is synchronous (tantivy is); the service calls it from blocking tasks.

use super::model::{
    BRAND_FACET_SIZE, Filters, ItemCategory, ItemRating, ListItem, MAX_QUERY_WORDS,
    MIN_FUZZY_WORD_CHARS, PRICE_BUCKETS, RATING_THRESHOLDS, Sort, SortFacts, SortKey, edits1,
    is_stopword, price_bucket, tiebreak_of,
};
use crate::catalog::ProductSnapshot;
use crate::catalog::model::{ProductStatus, effective_price};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tantivy::collector::{Collector, Count, SegmentCollector, TopDocs};
use tantivy::columnar::{Column, StrColumn};
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, EmptyQuery, FuzzyTermQuery, Occur, Query, TermQuery,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    TextAnalyzer,
};
use tantivy::{
    DocAddress, DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher,
    SegmentOrdinal, SegmentReader, TantivyDocument, Term,
};

/// Bumped whenever the schema, the analyzers or what goes into a document changes: an index
/// written with another version is thrown away and rebuilt from the database at start-up.
pub const SCHEMA_VERSION: u32 = 2;

const STEMMED: &str = "mercato_en";
const PLAIN: &str = "mercato_plain";
/// Present while the index may lack changes whose events were already acknowledged.
const DIRTY_MARKER: &str = "mercato-uncommitted";
const WRITER_MEMORY: usize = 64 * 1024 * 1024;

/// What every commit records about the index (tantivy's commit payload).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Payload {
    pub schema_version: u32,
    /// Which database the index mirrors (a hash of its URL without credentials).
    pub source: String,
    /// When the last full rebuild started, unix microseconds: every change committed to the
    /// database before then is in the index.
    pub rebuilt_at: i64,
}

#[derive(Clone, Copy)]
pub struct Fields {
    id: Field,
    tiebreak: Field,
    name: Field,
    brand_text: Field,
    description: Field,
    attrs: Field,
    sku: Field,
    vocab: Field,
    completion: Field,
    brand: Field,
    category: Field,
    price: Field,
    created: Field,
    rating: Field,
    reviews: Field,
    in_stock: Field,
    version: Field,
    item: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let stemmed = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(STEMMED)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let plain = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(PLAIN)
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false),
    );
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        tiebreak: b.add_u64_field("tiebreak", FAST),
        name: b.add_text_field("name", stemmed.clone()),
        brand_text: b.add_text_field("brand_text", stemmed.clone()),
        description: b.add_text_field("description", stemmed.clone()),
        attrs: b.add_text_field("attrs", stemmed),
        sku: b.add_text_field("sku", STRING),
        vocab: b.add_text_field("vocab", plain.clone()),
        completion: b.add_text_field("completion", plain),
        brand: b.add_text_field("brand", STRING | FAST),
        category: b.add_text_field("category", STRING | FAST),
        price: b.add_i64_field("price", FAST | INDEXED),
        created: b.add_i64_field("created", FAST),
        rating: b.add_u64_field("rating", FAST),
        reviews: b.add_u64_field("reviews", FAST),
        in_stock: b.add_u64_field("in_stock", FAST),
        version: b.add_i64_field("version", FAST),
        item: b.add_text_field("item", STORED),
    };
    (b.build(), fields)
}

fn analyzer(stem: bool) -> TextAnalyzer {
    let b = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter);
    if stem {
        b.filter(Stemmer::new(Language::English)).build()
    } else {
        b.build()
    }
}

/// The words of `text` as the index sees them.
fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

fn attribute_text(attrs: &serde_json::Map<String, serde_json::Value>, out: &mut String) {
    for v in attrs.values() {
        match v {
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push(' ');
            }
            serde_json::Value::Number(n) => {
                out.push_str(&n.to_string());
                out.push(' ');
            }
            serde_json::Value::Array(a) => {
                for x in a {
                    match x {
                        serde_json::Value::String(s) => out.push_str(s),
                        other => out.push_str(&other.to_string()),
                    }
                    out.push(' ');
                }
            }
            _ => {}
        }
    }
}

/// The list item of a product, or `None` when it must not be listed publicly (a draft, or no
/// purchasable variant).
pub fn list_item(snap: &ProductSnapshot) -> Option<ListItem> {
    let p = &snap.product;
    if p.status != ProductStatus::Active {
        return None;
    }
    let active: Vec<_> = p.variants.iter().filter(|v| v.active).collect();
    let cheapest = active
        .iter()
        .min_by_key(|v| effective_price(v.price, v.sale_price).amount)?;
    let price = effective_price(cheapest.price, cheapest.sale_price);
    let max_price = active
        .iter()
        .map(|v| effective_price(v.price, v.sale_price))
        .max_by_key(|m| m.amount)
        .unwrap_or(price);
    Some(ListItem {
        id: p.id.clone(),
        name: p.name.clone(),
        brand: p.brand.clone(),
        category: ItemCategory {
            id: p.category.id.clone(),
            name: p.category.name.clone(),
            slug: p.category.slug.clone(),
        },
        price,
        regular_price: cheapest.sale_price.map(|_| cheapest.price),
        max_price,
        image: p.images.first().cloned(),
        rating: ItemRating {
            average: p.rating.average,
            count: p.rating.count,
        },
        in_stock: active.iter().any(|v| v.available.is_none_or(|a| a > 0)),
        variant_count: active.len(),
        created_at: p.created_at,
    })
}

/// Per-request inputs the collector needs.
#[derive(Clone, Debug)]
pub struct Plan {
    pub filters: Filters,
    pub sort: Sort,
    pub limit: usize,
    pub after: Option<SortKey>,
}

/// What a search found: one page of items, the total and the raw facet counts.
#[derive(Debug, Default)]
pub struct Found {
    pub items: Vec<(SortKey, ListItem)>,
    /// An item beyond the page exists.
    pub more: bool,
    pub total: u64,
    pub brands: HashMap<String, u64>,
    pub categories: HashMap<String, u64>,
    pub price_ranges: Vec<u64>,
    pub rating: Vec<u64>,
}

/// The index, its reader and its (single) writer.
pub struct Engine {
    index: Index,
    reader: IndexReader,
    f: Fields,
    dir: PathBuf,
    writer: Mutex<WriterState>,
}

struct WriterState {
    writer: Option<IndexWriter>,
    /// Staged changes not yet committed.
    dirty: bool,
    /// A full rebuild over a live index is in progress: do not expose a half-built index.
    hold_commits: bool,
    payload: Payload,
    /// Product versions staged since the last commit (drafts and removals included).
    staged: HashMap<String, i64>,
}

/// Why [`Engine::open`] wants a rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rebuild {
    /// The index is complete.
    No,
    /// It may miss recent changes (the process stopped with uncommitted work): rebuild while
    /// serving what it has.
    Stale,
    /// It was missing, from another schema version or another database: it starts empty.
    Fresh,
}

fn lock_error(e: tantivy::TantivyError) -> anyhow::Error {
    match e {
        tantivy::TantivyError::LockFailure(..) => anyhow::anyhow!(
            "the search index is in use by another process (is a server running on this data \
             directory?)"
        ),
        other => anyhow::Error::new(other).context("opening the search index writer"),
    }
}

fn wipe(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the old search index {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the search index dir {}", dir.display()))?;
    Ok(())
}

impl Engine {
    /// Opens the index in `dir`, or creates it (replacing one of another schema version or
    /// database). Takes the writer lock: one process per index directory.
    pub fn open(dir: &Path, source: &str) -> anyhow::Result<(Engine, Rebuild)> {
        let (schema, f) = schema();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the search index dir {}", dir.display()))?;
        let existing = if dir.join("meta.json").exists() {
            match Index::open_in_dir(dir) {
                Ok(index) => {
                    // Take the writer lock before anything else: an index another process
                    // holds is never wiped, whatever its version.
                    let writer = Self::writer(&index)?;
                    let payload = index
                        .load_metas()
                        .ok()
                        .and_then(|m| m.payload)
                        .and_then(|p| serde_json::from_str::<Payload>(&p).ok());
                    match payload {
                        Some(p) if p.schema_version == SCHEMA_VERSION && p.source == source => {
                            Some((index, p, writer))
                        }
                        other => {
                            tracing::info!(found = ?other, expected = SCHEMA_VERSION, "search index is from another schema version or database; rebuilding it");
                            drop(writer);
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "search index unreadable; rebuilding it");
                    None
                }
            }
        } else {
            None
        };
        let (index, payload, writer, rebuild) = match existing {
            Some((index, payload, writer)) => {
                let rebuild = if dir.join(DIRTY_MARKER).exists() {
                    Rebuild::Stale
                } else {
                    Rebuild::No
                };
                (index, payload, writer, rebuild)
            }
            None => {
                wipe(dir)?;
                let index =
                    Index::create_in_dir(dir, schema).context("creating the search index")?;
                let writer = Self::writer(&index)?;
                let payload = Payload {
                    schema_version: SCHEMA_VERSION,
                    source: source.to_owned(),
                    rebuilt_at: 0,
                };
                (index, payload, writer, Rebuild::Fresh)
            }
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .context("opening the search index reader")?;
        Ok((
            Engine {
                index,
                reader,
                f,
                dir: dir.to_path_buf(),
                writer: Mutex::new(WriterState {
                    writer: Some(writer),
                    dirty: false,
                    hold_commits: false,
                    payload,
                    staged: HashMap::new(),
                }),
            },
            rebuild,
        ))
    }

    fn writer(index: &Index) -> anyhow::Result<IndexWriter> {
        index.tokenizers().register(STEMMED, analyzer(true));
        index.tokenizers().register(PLAIN, analyzer(false));
        index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(lock_error)
    }

    fn state(&self) -> anyhow::Result<std::sync::MutexGuard<'_, WriterState>> {
        self.writer
            .lock()
            .map_err(|_| anyhow::anyhow!("search writer lock poisoned"))
    }

    /// When the last full rebuild started (unix microseconds; 0 = never).
    pub fn rebuilt_at(&self) -> i64 {
        self.state().map(|s| s.payload.rebuilt_at).unwrap_or(0)
    }

    /// Records that staged, acknowledged work exists before staging it, so a crash before the
    /// next commit is detected at start-up (and repaired by a rebuild).
    fn mark_dirty(&self, st: &mut WriterState) -> anyhow::Result<()> {
        if !st.dirty {
            let path = self.dir.join(DIRTY_MARKER);
            let file = std::fs::File::create(&path).context("writing the search dirty marker")?;
            file.sync_all().context("syncing the search dirty marker")?;
            if let Ok(d) = std::fs::File::open(&self.dir) {
                let _ = d.sync_all();
            }
            st.dirty = true;
        }
        Ok(())
    }

    /// Builds the index document of a product; `None` when it must not be listed.
    fn document(&self, snap: &ProductSnapshot) -> anyhow::Result<Option<TantivyDocument>> {
        let Some(item) = list_item(snap) else {
            return Ok(None);
        };
        let p = &snap.product;
        let f = &self.f;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, &p.id);
        doc.add_u64(f.tiebreak, tiebreak_of(&p.id));
        doc.add_text(f.name, &p.name);
        doc.add_text(f.brand_text, &p.brand);
        doc.add_text(f.description, &p.description);
        let mut attrs = String::new();
        attribute_text(&p.attributes, &mut attrs);
        for v in p.variants.iter().filter(|v| v.active) {
            attrs.push_str(&v.name);
            attrs.push(' ');
            attribute_text(&v.attributes, &mut attrs);
            doc.add_text(f.sku, &v.sku);
        }
        attrs.push_str(&p.category.name);
        doc.add_text(f.attrs, &attrs);
        for text in [&p.name, &p.brand, &p.description, &attrs] {
            doc.add_text(f.vocab, text);
        }
        doc.add_text(f.completion, &p.name);
        doc.add_text(f.completion, &p.brand);
        doc.add_text(f.brand, &p.brand);
        for c in &snap.category_path {
            doc.add_text(f.category, c);
        }
        doc.add_i64(f.price, item.price.amount);
        doc.add_i64(f.created, p.created_at.as_micros());
        doc.add_u64(
            f.rating,
            (p.rating.average * 100.0).round().clamp(0.0, 500.0) as u64,
        );
        doc.add_u64(f.reviews, u64::try_from(p.rating.count).unwrap_or(0));
        doc.add_u64(f.in_stock, u64::from(item.in_stock));
        doc.add_i64(f.version, p.version);
        doc.add_text(f.item, serde_json::to_string(&item)?);
        Ok(Some(doc))
    }

    /// Replaces the documents of `ids` with `snapshots` (ids without a listable snapshot are
    /// removed). Staged: visible after the next commit.
    pub fn stage(&self, ids: &[String], snapshots: &[ProductSnapshot]) -> anyhow::Result<()> {
        let mut docs = Vec::with_capacity(snapshots.len());
        for s in snapshots {
            if let Some(d) = self.document(s)? {
                docs.push(d);
            }
        }
        let mut st = self.state()?;
        self.mark_dirty(&mut st)?;
        let writer = st
            .writer
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the search index is closed"))?;
        for id in ids {
            writer.delete_term(Term::from_field_text(self.f.id, id));
        }
        for d in docs {
            writer.add_document(d)?;
        }
        for s in snapshots {
            st.staged.insert(s.product.id.clone(), s.product.version);
        }
        Ok(())
    }

    /// The catalog version of `id` the index already reflects (staged or committed), if
    /// known: an event about an older or equal version needs no re-read.
    pub fn known_version(&self, id: &str) -> anyhow::Result<Option<i64>> {
        if let Some(v) = self.state()?.staged.get(id) {
            return Ok(Some(*v));
        }
        let searcher = self.reader.searcher();
        let top = searcher.search(
            &TermQuery::new(
                Term::from_field_text(self.f.id, id),
                IndexRecordOption::Basic,
            ),
            &TopDocs::with_limit(1),
        )?;
        let Some((_, addr)) = top.first() else {
            return Ok(None);
        };
        let column = searcher
            .segment_reader(addr.segment_ord)
            .fast_fields()
            .i64("version")?;
        Ok(column.first(addr.doc_id))
    }

    /// Starts a full rebuild: everything indexed so far is deleted (documents staged after
    /// this call survive). Over a live index, commits wait for [`Engine::finish_rebuild`] so
    /// searches keep seeing the old, complete index meanwhile.
    pub fn begin_rebuild(&self, live: bool, started_at: i64) -> anyhow::Result<()> {
        let mut st = self.state()?;
        self.mark_dirty(&mut st)?;
        let writer = st
            .writer
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the search index is closed"))?;
        writer.delete_query(Box::new(AllQuery))?;
        st.hold_commits = live;
        st.payload.rebuilt_at = started_at;
        Ok(())
    }

    pub fn finish_rebuild(&self) -> anyhow::Result<()> {
        {
            let mut st = self.state()?;
            st.hold_commits = false;
            st.dirty = true;
        }
        self.commit()?;
        Ok(())
    }

    /// Commits staged changes (unless a rebuild holds commits) and makes them searchable.
    /// Returns whether anything was committed.
    pub fn commit(&self) -> anyhow::Result<bool> {
        let mut st = self.state()?;
        if !st.dirty || st.hold_commits {
            return Ok(false);
        }
        let payload = serde_json::to_string(&st.payload)?;
        let writer = st
            .writer
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the search index is closed"))?;
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.reader.reload()?;
        st.staged.clear();
        // Everything acknowledged so far is durable now.
        match std::fs::remove_file(self.dir.join(DIRTY_MARKER)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::Error::new(e).context("removing the dirty marker")),
        }
        st.dirty = false;
        Ok(true)
    }

    /// Final commit and release of the writer lock (graceful shutdown). A rebuild still in
    /// progress is not committed: the dirty marker makes the next start rebuild again.
    pub fn close(&self) -> anyhow::Result<()> {
        let r = self.commit();
        let mut st = self.state()?;
        if let Some(w) = st.writer.take() {
            // Waits for merges; dropping releases the directory lock.
            let _ = w.wait_merging_threads();
        }
        r.map(|_| ())
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn stemmed_analyzer(&self) -> TextAnalyzer {
        self.index
            .tokenizers()
            .get(STEMMED)
            .unwrap_or_else(|| analyzer(true))
    }

    fn plain_analyzer(&self) -> TextAnalyzer {
        self.index
            .tokenizers()
            .get(PLAIN)
            .unwrap_or_else(|| analyzer(false))
    }

    /// The words of a query as the plain (unstemmed) analyzer sees them, capped.
    pub fn query_words(&self, q: &str) -> Vec<String> {
        let mut words = tokens(&mut self.plain_analyzer(), q);
        words.truncate(MAX_QUERY_WORDS);
        words
    }

    /// BM25 over name, brand, description and attribute text; every word must match (stop
    /// words excepted), exactly (stemmed) or — for words of 4+ characters — within one edit
    /// (typo) of a word of the product; an exact SKU also matches.
    pub fn text_query(&self, q: &str) -> Box<dyn Query> {
        let f = &self.f;
        let words = self.query_words(q);
        let mut stem = self.stemmed_analyzer();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let searcher = self.reader.searcher();
        let all_stop = words.iter().all(|w| is_stopword(w));
        for w in &words {
            let mut alts: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for s in tokens(&mut stem, w) {
                for (field, boost) in [
                    (f.name, 3.0),
                    (f.brand_text, 2.5),
                    (f.attrs, 1.5),
                    (f.description, 1.0),
                ] {
                    alts.push((
                        Occur::Should,
                        Box::new(BoostQuery::new(
                            Box::new(TermQuery::new(
                                Term::from_field_text(field, &s),
                                IndexRecordOption::WithFreqs,
                            )),
                            boost,
                        )),
                    ));
                }
            }
            alts.push((
                Occur::Should,
                Box::new(TermQuery::new(
                    Term::from_field_text(f.vocab, w),
                    IndexRecordOption::Basic,
                )),
            ));
            // Typo tolerance for words no product contains as typed (a word that exists is
            // taken as meant: cheaper, and "cast" does not also find "case").
            if w.chars().count() >= MIN_FUZZY_WORD_CHARS
                && !w.chars().all(|c| c.is_ascii_digit())
                && searcher
                    .doc_freq(&Term::from_field_text(f.vocab, w))
                    .unwrap_or(0)
                    == 0
            {
                alts.push((
                    Occur::Should,
                    Box::new(BoostQuery::new(
                        Box::new(FuzzyTermQuery::new(
                            Term::from_field_text(f.vocab, w),
                            1,
                            true,
                        )),
                        0.5,
                    )),
                ));
            }
            let occur = if is_stopword(w) && !all_stop {
                Occur::Should
            } else {
                Occur::Must
            };
            clauses.push((occur, Box::new(BooleanQuery::new(alts))));
        }
        let words_query: Box<dyn Query> = if clauses.is_empty() {
            Box::new(EmptyQuery)
        } else {
            Box::new(BooleanQuery::new(clauses))
        };
        // A SKU typed as is ("LAP-13-SLV") matches its product.
        match crate::catalog::model::Sku::parse(q) {
            Some(sku) => Box::new(BooleanQuery::new(vec![
                (Occur::Should, words_query),
                (
                    Occur::Should,
                    Box::new(BoostQuery::new(
                        Box::new(TermQuery::new(
                            Term::from_field_text(f.sku, sku.as_str()),
                            IndexRecordOption::Basic,
                        )),
                        10.0,
                    )),
                ),
            ])),
            None => words_query,
        }
    }

    /// Runs `query` with the filters, facets, sort and keyset of `plan`.
    pub fn search(&self, query: &dyn Query, plan: &Plan) -> anyhow::Result<Found> {
        let searcher = self.reader.searcher();
        let collector = FacetCollector {
            plan: plan.clone(),
            brands_lc: plan
                .filters
                .brands
                .iter()
                .map(|b| b.to_lowercase())
                .collect(),
        };
        let fruit = searcher.search(query, &collector)?;
        let mut items = Vec::with_capacity(fruit.hits.len());
        for (key, addr) in fruit.hits.iter().take(plan.limit) {
            let doc: TantivyDocument = searcher.doc(*addr)?;
            let json = doc
                .get_first(self.f.item)
                .and_then(|v| v.as_str())
                .ok_or_else(|| anyhow::anyhow!("indexed document without its item"))?;
            items.push((*key, serde_json::from_str::<ListItem>(json)?));
        }
        Ok(Found {
            more: fruit.hits.len() > plan.limit,
            items,
            total: fruit.total,
            brands: fruit.brands,
            categories: fruit.categories,
            price_ranges: fruit.price_ranges,
            rating: fruit.rating,
        })
    }

    /// Live documents containing `term`.
    fn live_count(searcher: &Searcher, term: Term) -> u64 {
        searcher
            .search(&TermQuery::new(term, IndexRecordOption::Basic), &Count)
            .map(|n| n as u64)
            .unwrap_or(0)
    }

    /// Whether some listed product contains the word (as typed, or stemmed).
    /// (Term dictionary lookups only: a word only deleted documents have still counts as
    /// known, which at worst withholds a suggestion.)
    fn known_word(&self, searcher: &Searcher, word: &str) -> bool {
        let df = |f: Field, t: &str| searcher.doc_freq(&Term::from_field_text(f, t)).unwrap_or(0);
        if df(self.f.vocab, word) > 0 {
            return true;
        }
        let mut stem = self.stemmed_analyzer();
        tokens(&mut stem, word).iter().any(|s| {
            [
                self.f.name,
                self.f.brand_text,
                self.f.attrs,
                self.f.description,
            ]
            .iter()
            .any(|f| df(*f, s) > 0)
        })
    }

    /// The most frequent listed word one edit away from `word`.
    fn correction(&self, searcher: &Searcher, word: &str) -> Option<String> {
        let mut candidates: Vec<(u64, String)> = edits1(word)
            .into_iter()
            .filter_map(|c| {
                let df = searcher
                    .doc_freq(&Term::from_field_text(self.f.vocab, &c))
                    .unwrap_or(0);
                (df > 0).then_some((df, c))
            })
            .collect();
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        candidates
            .into_iter()
            .take(5)
            .find(|(_, c)| Self::live_count(searcher, Term::from_field_text(self.f.vocab, c)) > 0)
            .map(|(_, c)| c)
    }

    /// The query with each unknown word of 4+ letters replaced by its likeliest correction,
    /// when at least one was replaced.
    pub fn did_you_mean(&self, q: &str) -> Option<String> {
        let searcher = self.reader.searcher();
        let words = self.query_words(q);
        let mut changed = false;
        let mut out = Vec::with_capacity(words.len());
        for w in words {
            // Longer words are rarely typos of one edit and cost the most candidates.
            let eligible = (MIN_FUZZY_WORD_CHARS..=24).contains(&w.chars().count())
                && !w.chars().any(|c| c.is_ascii_digit())
                && !is_stopword(&w);
            if eligible
                && !self.known_word(&searcher, &w)
                && let Some(c) = self.correction(&searcher, &w)
            {
                changed = true;
                out.push(c);
            } else {
                out.push(w);
            }
        }
        changed.then(|| out.join(" "))
    }

    /// Completions of what the user is typing: words of product names and brands that start
    /// with the last word (after the words before it), then names of products that match.
    pub fn suggest(&self, q: &str, limit: usize) -> anyhow::Result<Vec<String>> {
        let searcher = self.reader.searcher();
        let mut words = self.query_words(q);
        let Some(last) = words.pop() else {
            return Ok(Vec::new());
        };
        let f = &self.f;
        // Expand the prefix over the completion vocabulary of every segment.
        let mut expansions: HashMap<String, u64> = HashMap::new();
        for seg in searcher.segment_readers() {
            let inverted = seg.inverted_index(f.completion)?;
            let mut stream = inverted.terms().range().ge(last.as_bytes()).into_stream()?;
            let mut seen = 0;
            while stream.advance() && seen < 500 {
                let key = stream.key();
                if !key.starts_with(last.as_bytes()) {
                    break;
                }
                if let Ok(k) = std::str::from_utf8(key) {
                    *expansions.entry(k.to_owned()).or_default() +=
                        u64::from(stream.value().doc_freq);
                }
                seen += 1;
            }
        }
        let mut ranked: Vec<(u64, String)> = expansions.into_iter().map(|(k, n)| (n, k)).collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        ranked.truncate(50);
        let previous: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|w| {
                (
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_text(f.completion, w),
                        IndexRecordOption::Basic,
                    )) as Box<dyn Query>,
                )
            })
            .collect();
        let with_previous = |extra: Box<dyn Query>| -> BooleanQuery {
            let mut c: Vec<(Occur, Box<dyn Query>)> =
                previous.iter().map(|(o, q)| (*o, q.box_clone())).collect();
            c.push((Occur::Must, extra));
            BooleanQuery::new(c)
        };
        let mut out: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let prefix = if words.is_empty() {
            String::new()
        } else {
            format!("{} ", words.join(" "))
        };
        // Word completions, checked against listed products (deleted documents linger in
        // the term dictionary until merged; a draft's words must not leak).
        let word_budget = limit.div_ceil(2).max(1);
        for (_, term) in &ranked {
            if out.len() >= word_budget {
                break;
            }
            let q = with_previous(Box::new(TermQuery::new(
                Term::from_field_text(f.completion, term),
                IndexRecordOption::Basic,
            )));
            if searcher.search(&q, &Count)? > 0 {
                let s = format!("{prefix}{term}");
                if seen.insert(s.clone()) {
                    out.push(s);
                }
            }
        }
        // Product names that match.
        if !ranked.is_empty() && out.len() < limit {
            let any_expansion = BooleanQuery::new(
                ranked
                    .iter()
                    .map(|(_, t)| {
                        (
                            Occur::Should,
                            Box::new(TermQuery::new(
                                Term::from_field_text(f.completion, t),
                                IndexRecordOption::Basic,
                            )) as Box<dyn Query>,
                        )
                    })
                    .collect(),
            );
            let q = with_previous(Box::new(any_expansion));
            let top = searcher.search(&q, &TopDocs::with_limit(limit * 2))?;
            for (_, addr) in top {
                if out.len() >= limit {
                    break;
                }
                let doc: TantivyDocument = searcher.doc(addr)?;
                if let Some(item) = doc
                    .get_first(f.item)
                    .and_then(|v| v.as_str())
                    .and_then(|j| serde_json::from_str::<ListItem>(j).ok())
                    && seen.insert(item.name.to_lowercase())
                {
                    out.push(item.name);
                }
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}

/// One pass over the documents matching the text query computes, at once: the page (a
/// bounded heap on the sort key, after the cursor), the total, and the four facets, each
/// counted over the documents that pass every filter but its own (disjunctive faceting).
struct FacetCollector {
    plan: Plan,
    brands_lc: Vec<String>,
}

struct Columns {
    price: Column<i64>,
    created: Column<i64>,
    rating: Column<u64>,
    reviews: Column<u64>,
    in_stock: Column<u64>,
    tiebreak: Column<u64>,
    brand: Option<StrColumn>,
    category: Option<StrColumn>,
}

struct SegCollector {
    seg: SegmentOrdinal,
    cols: Columns,
    plan: Plan,
    /// `None`: no brand filter; else which brand ordinals pass.
    brand_ok: Option<Vec<bool>>,
    category_ok: Option<Vec<bool>>,
    brand_counts: Vec<u64>,
    /// By category ordinal (a handful of categories, so a dense vector).
    category_counts: Vec<u64>,
    price_ranges: Vec<u64>,
    rating: Vec<u64>,
    total: u64,
    top: TopN,
    cats: Vec<u64>,
}

struct SegFruit {
    hits: Vec<(SortKey, DocAddress)>,
    total: u64,
    brands: HashMap<String, u64>,
    categories: HashMap<String, u64>,
    price_ranges: Vec<u64>,
    rating: Vec<u64>,
}

impl Collector for FacetCollector {
    type Fruit = SegFruit;
    type Child = SegCollector;

    fn for_segment(
        &self,
        seg: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegCollector> {
        let ff = reader.fast_fields();
        let cols = Columns {
            price: ff.i64("price")?,
            created: ff.i64("created")?,
            rating: ff.u64("rating")?,
            reviews: ff.u64("reviews")?,
            in_stock: ff.u64("in_stock")?,
            tiebreak: ff.u64("tiebreak")?,
            brand: ff.str("brand")?,
            category: ff.str("category")?,
        };
        let brand_ok = if self.brands_lc.is_empty() {
            None
        } else {
            let mut ok = Vec::new();
            if let Some(col) = &cols.brand {
                let mut s = String::new();
                for ord in 0..col.num_terms() as u64 {
                    s.clear();
                    let found = col.ord_to_str(ord, &mut s)?;
                    ok.push(found && self.brands_lc.contains(&s.to_lowercase()));
                }
            }
            Some(ok)
        };
        let category_ok = if self.plan.filters.categories.is_empty() {
            None
        } else {
            let mut ok = vec![false; cols.category.as_ref().map_or(0, |c| c.num_terms())];
            if let Some(col) = &cols.category {
                for c in &self.plan.filters.categories {
                    if let Some(ord) = col.dictionary().term_ord(c.as_bytes())?
                        && let Some(slot) = ok.get_mut(ord as usize)
                    {
                        *slot = true;
                    }
                }
            }
            Some(ok)
        };
        let num_brands = cols.brand.as_ref().map(|c| c.num_terms()).unwrap_or(0);
        let num_categories = cols.category.as_ref().map(|c| c.num_terms()).unwrap_or(0);
        Ok(SegCollector {
            seg,
            cols,
            plan: self.plan.clone(),
            brand_ok,
            category_ok,
            brand_counts: vec![0; num_brands],
            category_counts: vec![0; num_categories],
            price_ranges: vec![0; PRICE_BUCKETS.len()],
            rating: vec![0; RATING_THRESHOLDS.len()],
            total: 0,
            top: TopN::new(self.plan.limit + 1),
            cats: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        self.plan.sort == Sort::Relevance
    }

    fn merge_fruits(&self, fruits: Vec<SegFruit>) -> tantivy::Result<SegFruit> {
        let mut out = SegFruit {
            hits: Vec::new(),
            total: 0,
            brands: HashMap::new(),
            categories: HashMap::new(),
            price_ranges: vec![0; PRICE_BUCKETS.len()],
            rating: vec![0; RATING_THRESHOLDS.len()],
        };
        for f in fruits {
            out.hits.extend(f.hits);
            out.total += f.total;
            for (k, n) in f.brands {
                *out.brands.entry(k).or_default() += n;
            }
            for (k, n) in f.categories {
                *out.categories.entry(k).or_default() += n;
            }
            for (a, b) in out.price_ranges.iter_mut().zip(f.price_ranges) {
                *a += b;
            }
            for (a, b) in out.rating.iter_mut().zip(f.rating) {
                *a += b;
            }
        }
        out.hits.sort_by_key(|a| a.0);
        out.hits.truncate(self.plan.limit + 1);
        Ok(out)
    }
}

impl SegmentCollector for SegCollector {
    type Fruit = SegFruit;

    fn collect(&mut self, doc: DocId, score: Score) {
        let c = &self.cols;
        let in_stock = c.in_stock.first(doc).unwrap_or(0) == 1;
        if self.plan.filters.in_stock && !in_stock {
            return;
        }
        let brand_ord = c.brand.as_ref().and_then(|b| b.ords().first(doc));
        let brand_ok = match &self.brand_ok {
            None => true,
            Some(ok) => brand_ord.is_some_and(|o| ok.get(o as usize).copied().unwrap_or(false)),
        };
        self.cats.clear();
        if let Some(col) = &c.category {
            self.cats.extend(col.ords().values_for_doc(doc));
        }
        let category_ok = match &self.category_ok {
            None => true,
            Some(ok) => self
                .cats
                .iter()
                .any(|o| ok.get(*o as usize).copied().unwrap_or(false)),
        };
        let price = c.price.first(doc).unwrap_or(0);
        let f = &self.plan.filters;
        let price_ok =
            f.min_price.is_none_or(|m| price >= m) && f.max_price.is_none_or(|m| price <= m);
        let rating = c.rating.first(doc).unwrap_or(0);
        let rating_ok = f.min_rating.is_none_or(|m| rating >= m);

        if category_ok
            && price_ok
            && rating_ok
            && let Some(o) = brand_ord
            && let Some(n) = self.brand_counts.get_mut(o as usize)
        {
            *n += 1;
        }
        if brand_ok && price_ok && rating_ok {
            for o in &self.cats {
                if let Some(n) = self.category_counts.get_mut(*o as usize) {
                    *n += 1;
                }
            }
        }
        if brand_ok && category_ok && rating_ok {
            self.price_ranges[price_bucket(price)] += 1;
        }
        if brand_ok && category_ok && price_ok {
            for (i, t) in RATING_THRESHOLDS.iter().enumerate() {
                if rating >= t * 100 {
                    self.rating[i] += 1;
                }
            }
        }
        if !(brand_ok && category_ok && price_ok && rating_ok) {
            return;
        }
        self.total += 1;
        // Only the column the sort needs is read.
        let facts = SortFacts {
            price,
            created: if self.plan.sort == Sort::Newest {
                c.created.first(doc).unwrap_or(0)
            } else {
                0
            },
            rating,
            reviews: if self.plan.sort == Sort::Rating {
                c.reviews.first(doc).unwrap_or(0)
            } else {
                0
            },
        };
        let key = SortKey::of(
            self.plan.sort,
            facts,
            score,
            c.tiebreak.first(doc).unwrap_or(0),
        );
        if self.plan.after.is_some_and(|a| key <= a) {
            return;
        }
        self.top.push(key, doc);
    }

    fn harvest(self) -> SegFruit {
        let mut brands = HashMap::new();
        let mut s = String::new();
        if let Some(col) = &self.cols.brand {
            for (ord, n) in self.brand_counts.iter().enumerate() {
                if *n > 0 {
                    s.clear();
                    if col.ord_to_str(ord as u64, &mut s).unwrap_or(false) {
                        *brands.entry(s.clone()).or_default() += n;
                    }
                }
            }
        }
        let mut categories = HashMap::new();
        if let Some(col) = &self.cols.category {
            for (ord, n) in self.category_counts.iter().enumerate() {
                if *n == 0 {
                    continue;
                }
                s.clear();
                if col.ord_to_str(ord as u64, &mut s).unwrap_or(false) {
                    *categories.entry(s.clone()).or_default() += n;
                }
            }
        }
        let seg = self.seg;
        SegFruit {
            hits: self
                .top
                .into_sorted()
                .into_iter()
                .map(|(k, d)| (k, DocAddress::new(seg, d)))
                .collect(),
            total: self.total,
            brands,
            categories,
            price_ranges: self.price_ranges,
            rating: self.rating,
        }
    }
}

/// The `cap` smallest keys seen: a buffer pruned to `cap` whenever it doubles (amortised
/// constant time per document, and a threshold that skips most documents once warm — a heap
/// would sift on every document when they arrive in sort order, as `newest` over a freshly
/// built index does).
struct TopN {
    cap: usize,
    buf: Vec<(SortKey, DocId)>,
    threshold: Option<SortKey>,
}

impl TopN {
    fn new(cap: usize) -> TopN {
        TopN {
            cap: cap.max(1),
            buf: Vec::with_capacity(cap.max(1) * 2),
            threshold: None,
        }
    }

    fn push(&mut self, key: SortKey, doc: DocId) {
        if self.threshold.is_some_and(|t| key >= t) {
            return;
        }
        self.buf.push((key, doc));
        if self.buf.len() >= self.cap * 2 {
            self.prune();
        }
    }

    fn prune(&mut self) {
        if self.buf.len() > self.cap {
            self.buf.select_nth_unstable(self.cap - 1);
            self.buf.truncate(self.cap);
            self.threshold = self.buf.iter().map(|(k, _)| *k).max();
        }
    }

    fn into_sorted(mut self) -> Vec<(SortKey, DocId)> {
        self.prune();
        self.buf.sort_unstable();
        self.buf
    }
}

/// The brand facet: the biggest [`BRAND_FACET_SIZE`] brands, plus any selected brand.
pub fn top_brands(counts: &HashMap<String, u64>, selected: &[String]) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let selected_lc: Vec<String> = selected.iter().map(|s| s.to_lowercase()).collect();
    let mut out: Vec<(String, u64)> = Vec::new();
    for (i, (k, v)) in all.into_iter().enumerate() {
        if i < BRAND_FACET_SIZE || selected_lc.contains(&k.to_lowercase()) {
            out.push((k, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_n_keeps_the_smallest_keys_in_order() {
        let key = |p: i64| SortKey {
            primary: p,
            tiebreak: 7,
        };
        for order in [
            (0..1000).collect::<Vec<i64>>(),
            (0..1000).rev().collect(),
            (0..1000).map(|i| (i * 7919) % 1000).collect(),
        ] {
            let mut top = TopN::new(21);
            for (d, p) in order.iter().enumerate() {
                top.push(key(*p), d as DocId);
            }
            let got: Vec<i64> = top.into_sorted().iter().map(|(k, _)| k.primary).collect();
            assert_eq!(got, (0..21).collect::<Vec<i64>>());
        }
        let mut few = TopN::new(5);
        few.push(key(3), 0);
        few.push(key(1), 1);
        assert_eq!(few.into_sorted().len(), 2);
    }
}
