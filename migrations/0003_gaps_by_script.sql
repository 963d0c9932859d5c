-- depends: 0002_completeness
-- GET /gaps?script_id= pages one script's ledger by gap id: an index that ends in id, so a page is an index range
-- (ix_gaps_script_state needs a state too; without one the server would sort all of the script's gaps per page).
CREATE INDEX ix_gaps_script_id ON gaps (script_id, id);
