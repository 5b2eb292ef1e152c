//! Conversions between the schema and its protobuf form (`relgraph.v1.DatabaseSchema`).

use relgraph_proto::v1 as pb;

use crate::schema::{ColumnSchema, DType, DatabaseSchema, ForeignKey, SType, TableSchema};

/// A protobuf schema that names a type this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("table `{table}`, column `{column}`: unknown {what} {value} in the protobuf schema")]
pub struct UnknownType {
    pub table: String,
    pub column: String,
    pub what: &'static str,
    pub value: i32,
}

impl From<DType> for pb::ColumnType {
    fn from(d: DType) -> Self {
        match d {
            DType::Bool => pb::ColumnType::Bool,
            DType::Int64 => pb::ColumnType::Int64,
            DType::Float64 => pb::ColumnType::Float64,
            DType::String => pb::ColumnType::String,
            DType::Timestamp => pb::ColumnType::Timestamp,
        }
    }
}

impl From<SType> for pb::SemanticType {
    fn from(s: SType) -> Self {
        match s {
            SType::Numerical => pb::SemanticType::Numerical,
            SType::Categorical => pb::SemanticType::Categorical,
            SType::Multicategorical => pb::SemanticType::Multicategorical,
            SType::Text => pb::SemanticType::Text,
            SType::Timestamp => pb::SemanticType::Timestamp,
            SType::Id => pb::SemanticType::Id,
        }
    }
}

impl From<&DatabaseSchema> for pb::DatabaseSchema {
    fn from(schema: &DatabaseSchema) -> Self {
        let tables = schema
            .tables
            .iter()
            .map(|t| pb::Table {
                name: t.name.clone(),
                columns: t
                    .columns
                    .iter()
                    .map(|c| pb::Column {
                        name: c.name.clone(),
                        dtype: pb::ColumnType::from(c.dtype) as i32,
                        stype: pb::SemanticType::from(c.stype) as i32,
                    })
                    .collect(),
                primary_key: t.primary_key.clone(),
                time_column: t.time_column.clone(),
                foreign_keys: t
                    .foreign_keys
                    .iter()
                    .map(|f| pb::ForeignKey {
                        column: f.column.clone(),
                        references: f.references.clone(),
                    })
                    .collect(),
            })
            .collect();
        pb::DatabaseSchema { tables }
    }
}

impl TryFrom<&pb::DatabaseSchema> for DatabaseSchema {
    type Error = UnknownType;

    fn try_from(schema: &pb::DatabaseSchema) -> Result<Self, UnknownType> {
        let mut tables = Vec::with_capacity(schema.tables.len());
        for t in &schema.tables {
            let mut columns = Vec::with_capacity(t.columns.len());
            for c in &t.columns {
                let unknown = |what, value| UnknownType {
                    table: t.name.clone(),
                    column: c.name.clone(),
                    what,
                    value,
                };
                let dtype = DType::ALL
                    .into_iter()
                    .find(|d| pb::ColumnType::from(*d) as i32 == c.dtype)
                    .ok_or_else(|| unknown("dtype", c.dtype))?;
                let stype = SType::ALL
                    .into_iter()
                    .find(|s| pb::SemanticType::from(*s) as i32 == c.stype)
                    .ok_or_else(|| unknown("stype", c.stype))?;
                columns.push(ColumnSchema {
                    name: c.name.clone(),
                    dtype,
                    stype,
                });
            }
            tables.push(TableSchema {
                name: t.name.clone(),
                columns,
                primary_key: t.primary_key.clone(),
                time_column: t.time_column.clone(),
                foreign_keys: t
                    .foreign_keys
                    .iter()
                    .map(|f| ForeignKey {
                        column: f.column.clone(),
                        references: f.references.clone(),
                    })
                    .collect(),
            });
        }
        Ok(DatabaseSchema { tables })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn schema_round_trips_through_protobuf_bytes() {
        let schema = DatabaseSchema {
            tables: vec![TableSchema {
                name: "orders".into(),
                columns: DType::ALL
                    .iter()
                    .zip(SType::ALL)
                    .map(|(d, s)| ColumnSchema {
                        name: format!("{d}_{s}"),
                        dtype: *d,
                        stype: s,
                    })
                    .collect(),
                primary_key: Some("int64_categorical".into()),
                time_column: None,
                foreign_keys: vec![ForeignKey {
                    column: "string_text".into(),
                    references: "x".into(),
                }],
            }],
        };
        let bytes = pb::DatabaseSchema::from(&schema).encode_to_vec();
        let decoded = pb::DatabaseSchema::decode(bytes.as_slice()).expect("decode");
        assert_eq!(
            DatabaseSchema::try_from(&decoded).expect("known types"),
            schema
        );
        let mut bad = decoded;
        bad.tables[0].columns[0].dtype = 99;
        assert!(DatabaseSchema::try_from(&bad).is_err());
    }
}
