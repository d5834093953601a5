// One <li> per record, kept in the records' order and updated in place (rows are never rebuilt
// under a pointer): rows is a Map id -> {li, ...}; create(record) makes a row, update(row,
// record) refreshes it; rows whose record is gone are removed. Shared by the stage list
// (stage.js) and the console's Sound panel (sound.js).
export function syncKeyedList(list, rows, records, create, update) {
  const seen = new Set();
  records.forEach((record, index) => {
    seen.add(record.id);
    let row = rows.get(record.id);
    if (!row) {
      row = create(record);
      rows.set(record.id, row);
    }
    update(row, record);
    if (list.children[index] !== row.li) list.insertBefore(row.li, list.children[index] || null);
  });
  for (const [id, row] of rows) {
    if (!seen.has(id)) {
      row.li.remove();
      rows.delete(id);
    }
  }
}
